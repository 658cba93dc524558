"""Bias discovery: which attributes go with the class on the training split, captioned or not.

A candidate is a vocabulary attribute with its value phrases ("{} on grass", "{} on water", ...).
Every training image gets a class-agnostic zero-shot value: its cosine with each value phrase
applied to every class name, averaged over the class names (template-ensembled as everywhere),
then the best value. Values given to fewer than `labelfree.DISCOVERY_MIN_VALUE_SHARE` of the
images are dropped one at a time (the smallest first, the images re-assigned among the rest), so
an attribute listing the world's five backgrounds keeps the two a task uses; a candidate needs
two values left. Its score says how strongly those assignments go with the class, i.e. how
spurious the attribute would be; three scores are offered (`choices.DiscoveryScore`):

- `cramers_v`: Cramér's V of the class x value table (0 independent, 1 one determines the other);
- `nmi`: normalised mutual information of class and value (arithmetic normalisation);
- `error_concentration`: in the spirit of B2T [Kim et al., CVPR 2024]: a cross-validated linear
  probe's training errors; per class, the share of its errors in a value minus the share of its
  correctly classified images in that value; the score is the largest over classes and values
  (a class needs `MIN_CLASS_ERRORS` errors to count).

Nothing here reads a bias label: only image features, class labels and the vocabulary.
`bias_prompts: auto` keeps only what is spurious (`mark_spurious`), at most `discover_top`
(`auto_attributes`): a candidate above the score's threshold that concentrates the ERM probe's or
zero-shot's errors and still goes with the class within the cells of the ones kept before it (a
proxy of a kept attribute adds nothing). The image side (unnamed.py) adds an unnamed attribute
where the image features hold one no kept caption explains. The choices are named in `labelfree.py`.

Vocabularies (attribute names -> value phrases, YAML files) are read in vocabulary.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..choices import DISCOVERY_SCORES
from ..data.base import apply_phrase
from ..errors import UserError, close_matches
from .association import cramers_v, read_off  # noqa: F401 (both are discovery's names too)
from .labelfree import (DISCOVERY_MAX_PROXY, DISCOVERY_MIN_CONCENTRATION, DISCOVERY_MIN_CONDITIONAL,
                        DISCOVERY_MIN_VALUE_SHARE, DISCOVERY_SCORE, DISCOVERY_THRESHOLDS)
from .vocabulary import (SHIPPED, Vocabulary, VocabularyFile, default_vocabulary, load_vocabulary,  # noqa: F401
                         value_name, with_slot)

PROBE_FOLDS = 3  # error_concentration: folds of the cross-validated probe
PROBE_MAX_ROWS = 20000  # error_concentration: the probe sees at most this many training images (seeded draw)
MIN_CLASS_ERRORS = 5  # error_concentration: a class with fewer probe errors says nothing
SHOWN = 10  # candidates a run's metrics.json and report list


def check_score(score: str) -> str:
    if score not in DISCOVERY_SCORES:
        raise UserError(f"unknown discovery score '{score}'{close_matches(score, DISCOVERY_SCORES)}; "
                        f"choose one of: {', '.join(DISCOVERY_SCORES)}")
    return score


# --- scores on arrays (no model) ---------------------------------------------------------------------

def assign_values(scores: np.ndarray, min_share: float = DISCOVERY_MIN_VALUE_SHARE) -> tuple[list[int], np.ndarray]:
    """(kept value indices, each image's value as an index into them) from (n, V) zero-shot scores.

    While a kept value holds fewer than `min_share` of the images, the smallest is dropped and its
    images go to their best remaining value. Fewer than two kept values: ([], empty)."""
    kept = list(range(scores.shape[1]))
    while len(kept) >= 2:
        assigned = np.argmax(scores[:, kept], axis=1)
        shares = np.bincount(assigned, minlength=len(kept)) / max(len(assigned), 1)
        if shares.min() >= min_share:
            return kept, assigned
        kept.pop(int(np.argmin(shares)))
    return [], np.zeros(0, dtype=np.int64)


def nmi(y: np.ndarray, values: np.ndarray) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(y, values))


def probe_errors(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """Which training images a cross-validated logistic regression on the features gets wrong
    (None when a class has too few images to cross-validate). At most PROBE_MAX_ROWS images,
    a seeded draw; the rest count as correct (they are left out of the score)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    rows = np.arange(len(y)) if len(y) <= PROBE_MAX_ROWS else np.sort(rng.choice(len(y), PROBE_MAX_ROWS, replace=False))
    folds = min(PROBE_FOLDS, int(np.bincount(y[rows]).min()))
    if folds < 2 or len(np.unique(y[rows])) < 2:
        return None
    probe = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    pred = cross_val_predict(probe, x[rows], y[rows], cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    errors = np.full(len(y), -1, dtype=np.int64)  # -1: not seen by the probe
    errors[rows] = (pred != y[rows]).astype(np.int64)
    return errors


def error_concentration(errors: np.ndarray | None, y: np.ndarray, values: np.ndarray) -> float:
    """Largest, over classes c and values v, of P(v | c, error) - P(v | c, correct) (B2T's score on
    zero-shot value assignments); 0 when no class has MIN_CLASS_ERRORS probe errors."""
    if errors is None:
        return 0.0
    best = 0.0
    n_values = int(values.max()) + 1 if len(values) else 0
    for c in np.unique(y):
        wrong, right = (y == c) & (errors == 1), (y == c) & (errors == 0)
        if wrong.sum() < MIN_CLASS_ERRORS or not right.any():
            continue
        share_wrong = np.bincount(values[wrong], minlength=n_values) / wrong.sum()
        share_right = np.bincount(values[right], minlength=n_values) / right.sum()
        best = max(best, float((share_wrong - share_right).max()))
    return best


SCORE_FUNCTIONS = {"cramers_v": cramers_v, "nmi": nmi}  # error_concentration needs the probe's errors too


def _scored(assigned: np.ndarray, y: np.ndarray, compute: tuple[str, ...], errors: dict) -> dict:
    """Every score of `compute` for one candidate's per-image values, and `concentration`: how much
    the values concentrate the ERM probe's or zero-shot's errors (the larger of the two)."""
    scores = {name: (error_concentration(errors["erm"], y, assigned) if name == "error_concentration"
                     else SCORE_FUNCTIONS[name](y, assigned)) for name in compute}
    scores["concentration"] = max(error_concentration(e, y, assigned) for e in errors.values())
    return scores


def rank_candidates(x: np.ndarray, y: np.ndarray, value_features: dict[str, tuple[tuple[str, ...], np.ndarray]],
                    score: str = DISCOVERY_SCORE, compute: tuple[str, ...] | None = None,
                    min_share: float = DISCOVERY_MIN_VALUE_SHARE, seed: int = 0,
                    zeroshot_pred: np.ndarray | None = None, image_side: bool = True,
                    unkept: list | None = None) -> list[dict]:
    """Candidates ranked by `score`, best first, from image features `x` (n, D), classes `y` and,
    per attribute, its value phrases with their class-averaged text features (V, D); with
    `image_side`, also the unnamed partition of the image features (unnamed.py) where no kept
    caption candidate names it.

    Each candidate: attribute, values (the kept phrases), score, scores (every score of
    `compute`, default just `score`, and `concentration`), shares (of the training images per kept
    value), dropped, assigned (each training image's value), spurious (whether it goes with the
    class above the threshold, concentrates the errors and adds to the ones ranked above it: what
    `bias_prompts: auto` may keep). The unnamed candidate, where found, comes right after the spurious
    caption candidates: it is what they leave unexplained; its `named_by`, where set, is a left-out
    caption candidate that splits each class the same way (`unnamed.caption_twin`). An attribute left
    with fewer than two values is no candidate; `unkept`, where given, receives it as {"attribute", "reason"}."""
    from .unnamed import caption_twin, image_candidate

    compute = tuple(dict.fromkeys([score, *(compute or ())]))
    errors = {"erm": probe_errors(x, y, seed)}
    if zeroshot_pred is not None:
        errors["zeroshot"] = (zeroshot_pred != y).astype(np.int64)
    out = []
    for attribute, (phrases, text) in value_features.items():
        scores = x @ text.T
        kept, assigned = assign_values(scores, min_share)
        if not kept:
            if unkept is not None:
                unkept.append({"attribute": attribute, "reason": _why_unkept(scores, phrases, min_share)})
            continue
        shares = np.bincount(assigned, minlength=len(kept)) / len(assigned)
        out.append({"attribute": attribute, "values": [phrases[k] for k in kept], "scores": _scored(assigned, y, compute, errors),
                    "shares": [round(float(s), 4) for s in shares], "assigned": assigned,
                    "dropped": [p for k, p in enumerate(phrases) if k not in kept]})
    for c in out:
        c["score"] = c["scores"][score]
    out.sort(key=lambda c: (-c["score"], c["attribute"]))
    mark_spurious(out, y, score)
    if image_side:  # found only: its score, made from the class, would rank it first whatever it is
        found = image_candidate(x, y, [c for c in out if c["spurious"]], zeroshot_pred, seed)
        if found is not None and found.pop("found"):
            found["scores"] = _scored(found["assigned"], y, compute, errors)
            found["score"], found["spurious"] = found["scores"][score], True
            if (twin := caption_twin(found, y, out)) is not None:
                found["named_by"] = twin
            after = max((i for i, c in enumerate(out) if c["spurious"]), default=-1) + 1
            out.insert(after, found)  # after the captioned ones it is the residual of
    return out


def _why_unkept(scores: np.ndarray, phrases, min_share: float) -> str:
    """Why an attribute kept fewer than two values, in words: the value most images matched, and its share."""
    shares = np.bincount(np.argmax(scores, axis=1), minlength=len(phrases)) / max(len(scores), 1)
    top = int(np.argmax(shares))
    return (f"fewer than two of its {len(phrases)} values matched {100 * min_share:g}% of the images: "
            f"{value_name(phrases[top])} {100 * shares[top]:.0f}%")


def conditional_association(y: np.ndarray, values: np.ndarray, kept: list[dict]) -> float:
    """Cramér's V of class and `values` within each cell of the `kept` candidates' joint values,
    weighted by cell size (a cell with one class or one value counts as 0): what the candidate says
    about the class beyond what the kept ones say. With nothing kept, plain Cramér's V."""
    if not kept:
        return cramers_v(y, values)
    cells = np.zeros(len(y), dtype=np.int64)
    for c in kept:
        cells = cells * (int(c["assigned"].max()) + 1) + c["assigned"]
    total = 0.0
    for cell in np.unique(cells):
        rows = cells == cell
        total += rows.sum() * cramers_v(y[rows], values[rows])
    return total / len(y)


def mark_spurious(ranked: list[dict], y: np.ndarray, score: str,
                  conditional: float = DISCOVERY_MIN_CONDITIONAL, proxy: float = DISCOVERY_MAX_PROXY) -> None:
    """Set each candidate's `spurious`, best first: it goes with the class (its score above the score's
    threshold), concentrates the ERM probe's or zero-shot's errors (`concentration` above
    `labelfree.DISCOVERY_MIN_CONCENTRATION`), still goes with the class within the cells of the
    spurious ones ranked above it (`scores["conditional"]` above `conditional`), and is not read off
    one of them within each class (`scores["read_off"]` below `proxy`): a proxy of a kept attribute
    (weather for the background) adds nothing and is not kept."""
    kept: list[dict] = []
    for c in ranked:
        c["scores"]["conditional"] = conditional_association(y, c["assigned"], kept)
        c["scores"]["read_off"] = read_off(y, c["assigned"], kept)
        c["spurious"] = bool(c["scores"][score] > DISCOVERY_THRESHOLDS[score]
                             and c["scores"]["concentration"] > DISCOVERY_MIN_CONCENTRATION
                             and c["scores"]["conditional"] > conditional
                             and c["scores"]["read_off"] < proxy)
        if c["spurious"]:
            kept.append(c)


def why_not_kept(c: dict, score: str) -> str | None:
    """In words, which of `mark_spurious`'s tests (at the defaults) a captioned candidate above the score's
    threshold failed; None for one kept, one below the threshold (its score says why) or an unnamed one."""
    tests = c.get("scores", {})
    if c.get("spurious") or c.get("unnamed") or c["score"] <= DISCOVERY_THRESHOLDS[score]:
        return None
    if tests.get("concentration", 1.0) <= DISCOVERY_MIN_CONCENTRATION:
        return f"its values concentrate few errors ({tests['concentration']:.2f})"
    if tests.get("read_off", 0.0) >= DISCOVERY_MAX_PROXY:
        return f"read off a kept attribute within each class ({tests['read_off']:.2f})"
    if tests.get("conditional", 1.0) <= DISCOVERY_MIN_CONDITIONAL:
        return f"adds little beside the kept ones ({tests['conditional']:.2f})"
    return None


def auto_attributes(candidates: list[dict], score: str, top: int) -> list[dict]:
    """What `bias_prompts: auto` keeps: the spurious candidates (`mark_spurious`), at most `top`."""
    return [c for c in candidates if c["spurious"]][:top]


# --- on a dataset's cached features ---------------------------------------------------------------------

def value_features(backbone, class_names, vocabulary: Vocabulary) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Per attribute: its phrases and, per phrase, the mean over class names of the text features of
    the phrase applied to the class name (template-ensembled, normalised per text)."""
    out = {}
    for attribute, phrases in vocabulary.attributes.items():
        texts = [apply_phrase(p, c) for p in phrases for c in class_names]
        feats = backbone.text_features(texts).float().cpu().numpy()
        out[attribute] = (phrases, feats.reshape(len(phrases), len(class_names), -1).mean(axis=1))
    return out


def discover_on(prep, vocabulary: Vocabulary, score: str = DISCOVERY_SCORE, compute: tuple[str, ...] | None = None,
                seed: int = 0, unkept: list | None = None, image_side: bool = True) -> list[dict]:
    """Ranked candidates on a prepared dataset's training split (features and class labels only);
    `unkept` receives the attributes left out, with why, and `image_side` False leaves the unnamed
    attribute out (`rank_candidates`)."""
    ds = prep.dataset
    rows = ds.split_indices("train")
    if not len(rows):
        raise UserError(f"{ds.name} has no training images to discover biases on")
    x = prep.feats.numpy(rows).astype(np.float64)
    classes = prep.backbone.text_features(list(ds.class_names)).float().cpu().numpy()
    return rank_candidates(x, ds.y[rows], value_features(prep.backbone, ds.class_names, vocabulary),
                           score, compute, seed=seed, zeroshot_pred=np.argmax(x @ classes.T, axis=1), unkept=unkept,
                           image_side=image_side)


@dataclass(frozen=True)
class Discovered:
    """What `bias_prompts: auto` found for a run: the ranked candidates and the ones it uses."""

    vocabulary: str
    score: str
    top: int
    candidates: list[dict]
    used: list[dict]

    @property
    def phrases(self) -> list[list[str]]:
        return [list(c["values"]) for c in self.used]

    @property
    def value_names(self) -> list[list[str]]:
        """Per used attribute, its values' names: "on water" from "{} on water"; an unnamed one's a, b."""
        return [list(c.get("value_names") or [value_name(p) for p in c["values"]]) for c in self.used]

    @property
    def unnamed(self) -> list[str]:
        return [c["attribute"] for c in self.used if c.get("unnamed")]

    def report(self, fallback: str | None) -> dict:
        """The metrics.json block."""
        shown = [{**{k: c[k] for k in ("attribute", "values", "score", "shares", "spurious")},
                  "concentration": round(c["scores"]["concentration"], 4),
                  **({k: c[k] for k in ("unnamed", "set_apart", "zeroshot_ratio", "near_boundary", "value_names", "named_from",
                                           "named_by")
                      if k in c} if c.get("unnamed") else {})}
                 | ({"not_kept": why} if (why := why_not_kept(c, self.score)) else {})
                 for c in self.candidates[:SHOWN]]
        return {"vocabulary": self.vocabulary, "score": self.score, "threshold": DISCOVERY_THRESHOLDS[self.score],
                "min_concentration": DISCOVERY_MIN_CONCENTRATION, "top": self.top,
                "min_value_share": DISCOVERY_MIN_VALUE_SHARE, "candidates": shown,
                "used": [c["attribute"] for c in self.used], "unnamed": self.unnamed,
                "fallback": None if fallback is None else f"{fallback}: {NOTHING_SPURIOUS}"}


NOTHING_SPURIOUS = ("no spurious attribute found: no vocabulary attribute went with the class and concentrated the "
                    "errors, and the image features split no class in two")


_RECENT: dict[tuple, tuple] = {}  # discovery of the last few (features, options, seed): a sweep's runs of a dataset share it
_RECENT_SIZE = 8


def discover_for_run(prep, options, seed: int = 0, image_side: bool = True) -> Discovered:
    """Discovery for `bias_prompts: auto` with a run's grouping options (vocabulary, score, top);
    `image_side` False leaves unnamed attributes out (a labeler that cannot label them). The runs of
    one sweep on a dataset's features share one discovery per seed (it reads nothing else)."""
    import hashlib

    from .unnamed import named

    ds = prep.dataset
    rows = ds.split_indices("train")
    key = (id(prep.feats), ds.name, hashlib.sha1(rows.tobytes() + ds.y[rows].tobytes()).hexdigest(),
           options.vocabulary, options.discover_score, seed)
    if key not in _RECENT:
        vocabulary = load_vocabulary(options.vocabulary, ds)
        if len(_RECENT) >= _RECENT_SIZE:
            _RECENT.pop(next(iter(_RECENT)))
        # the features are held with the result, so their id names no other features while it is here
        _RECENT[key] = (prep.feats, vocabulary.name, discover_on(prep, vocabulary, options.discover_score, seed=seed))
    _, vocabulary_name, candidates = _RECENT[key]
    if options.name_attribute is not None:
        candidates = [named(c, options.name_attribute) if c.get("unnamed") else c for c in candidates]
    usable = [c for c in candidates if image_side or not c.get("unnamed")]
    return Discovered(vocabulary_name, options.discover_score, options.discover_top, list(candidates),
                      auto_attributes(usable, options.discover_score, options.discover_top))


def format_candidates(candidates: list[dict], dataset, vocabulary: Vocabulary, score: str | None = None,
                      unkept: list[dict] | None = None) -> str:
    """The ranked candidates as a table for the terminal, with what `bias_prompts: auto` would keep, and
    the vocabulary's attributes left out, with why (`unkept`)."""
    score = score or DISCOVERY_SCORE
    n_train = len(dataset.split_indices("train"))
    threshold = DISCOVERY_THRESHOLDS[score]
    lines = [f"bias candidates on {dataset.name} train ({n_train} images), vocabulary {vocabulary.name}, score {score}, "
             "and the image features' own partition (unnamed):", ""]
    dropped = ["", "dropped (no candidate):", *(f"  {u['attribute']} ({u['reason']})" for u in unkept)] if unkept else []
    if not candidates:
        return "\n".join(lines + ["  no attribute kept two values (each value must match at least "
                                  f"{100 * DISCOVERY_MIN_VALUE_SHARE:g}% of the images), and the image features "
                                  "split no class in two", *dropped])
    width = max(len("attribute"), *(len(c["attribute"]) for c in candidates))
    lines.append(f"  {'rank':>4}  {'attribute':<{width}}  {'score':>6}  {'errors':>6}  values (share of training images)")
    for rank, c in enumerate(candidates, 1):
        names = c.get("value_names") or c["values"]
        values = ", ".join(f"{v} {100 * s:.0f}%" for v, s in zip(names, c["shares"]))
        if c.get("named_by"):
            values += f"  (the same partition as {c['named_by']})"
        if why := why_not_kept(c, score):
            values += f"  (not kept: {why})"
        mark = " *" if c["spurious"] else ""
        lines.append(f"  {rank:>4}  {c['attribute']:<{width}}  {c['score']:6.3f}  {c['scores']['concentration']:6.3f}"
                     f"  {values}{mark}")
    lines += ["", f"* spurious, what bias_prompts auto keeps: score above {threshold}, errors (how much a value "
              f"concentrates the ERM probe's or zero-shot's errors) above {DISCOVERY_MIN_CONCENTRATION}, still "
              f"going with the class beside the ones kept above it (Cramér's V within their cells above "
              f"{DISCOVERY_MIN_CONDITIONAL}) and not read off one of them (Cramér's V within each class below "
              f"{DISCOVERY_MAX_PROXY}); an unnamed attribute: a crisp split of the image features, beside the kept "
              "captions, that goes with the class and whose set-apart images zero-shot still reads right"]
    if not any(c["spurious"] for c in candidates):
        lines.append(NOTHING_SPURIOUS)
    return "\n".join(lines + dropped)

