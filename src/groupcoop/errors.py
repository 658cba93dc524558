"""The one exception type that means "the user gave us something wrong".

The CLI prints its message as a single line on stderr and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


def close_matches(word: str, choices, n: int = 3) -> str:
    """A ' (did you mean: a, b?)' suffix for a misspelt name, or '' when nothing is close."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(lowered[h] for h in hits)}?)" if hits else ""
