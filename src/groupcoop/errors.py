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


def quoted(value, limit: int = 60) -> str:
    """`value` as an error line quotes it: its repr, cut to about `limit` characters.

    reprlib looks at a bounded part of a container (a few items, a few levels), so a megabyte
    string or a YAML alias bomb (a billion shared items) costs a short line, never its full repr."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = short.maxdeque = 4
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a numpy scalar: 7, not np.int64(7)
        value = value.item()
    text = short.repr(value)
    return text if len(text) <= limit + 5 else text[:limit] + "..."
