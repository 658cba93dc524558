"""The label-free regime's open choices, each said here once (issue 16).

These are scientific choices, to be made on the dev suite and never on the report suite:
- `scripts/discovery_hit_rate.py dev` measures bias discovery (hit rate of
  each score, the score distributions of true and other attributes, and what `bias_prompts:
  auto` would keep at each threshold), for DISCOVERY_SCORE, DISCOVERY_THRESHOLDS,
  DISCOVERY_MIN_VALUE_SHARE and DISCOVER_TOP;
- `groupcoop sweep selection-dev` compares the two label-free
  selection rules on the dev suite with train and val bias labels hidden, for SELECTION_FALLBACK;
- AUTO_FALLBACK_LABELER is what `bias_prompts: auto` trains on when nothing is discovered.

SELECTION_FALLBACK and DISCOVERY_SCORE were checked on the dev suite (docs/defaults.md); the
thresholds, the minimum value share, DISCOVER_TOP and AUTO_FALLBACK_LABELER are still starting
points. A leaf module: it imports nothing of groupcoop but `choices`.
"""

from __future__ import annotations

from ..choices import DISCOVERY_SCORES, SELECTIONS

# `selection: auto` on a validation split without true groups: "labeler" (the labeler's val groups)
# or "worst_class" (worst per-class val accuracy). Where the labeler cannot label val (--groups gt
# with val's labels hidden), auto uses worst_class whatever this says. Kept on dev (selection-dev,
# synth-random:0..14): GroupCoOp 59.0 with labeler vs 58.0 with worst_class; the four methods tie on average.
SELECTION_FALLBACK = "labeler"

# Bias discovery: the score that ranks candidate attributes, and per score the threshold above which
# `bias_prompts: auto` keeps a candidate (the scores live on different scales). The thresholds are where
# scripts/discovery_hit_rate.py kept exactly the true attributes most often on 3 dev tasks
# (synth-random:0..2; 0.2 / 0.05 / 0.2 kept distractors everywhere): a first guess, not a choice.
DISCOVERY_SCORE = "cramers_v"
DISCOVERY_THRESHOLDS = {"cramers_v": 0.5, "nmi": 0.15, "error_concentration": 0.5}
# A vocabulary attribute lists more values than a task uses (the world's 5 backgrounds, a task uses 2):
# values that zero-shot gives to fewer than this share of the training images are dropped.
DISCOVERY_MIN_VALUE_SHARE = 0.05
# A spurious candidate also concentrates errors: the share of a class's ERM-probe (or zero-shot) errors in
# one value exceeds that value's share of its correct images by more than this (discovery.mark_spurious).
DISCOVERY_MIN_CONCENTRATION = 0.1
# ... and still goes with the class within the cells of the attributes kept before it (Cramér's V, size-weighted),
# and, within each class, is not read off a kept attribute (Cramér's V with it, size-weighted, below the second):
# a proxy of a kept attribute adds nothing (discovery.mark_spurious). The proxy bound was chosen on the dev suite
# (synth-random:0..59, presets/experiments/discovery-both-sides.yaml), the conditional one again with real CLIP's
# vocabulary's distractors counted too (discovery-clip-vocabulary.yaml; docs/defaults.md): 0.35 kept every true
# bias on 65% of the tasks (0.2: 73%), a distractor on 7% (world vocabulary) and 30% (clip; 0.2: 52%).
DISCOVERY_MIN_CONDITIONAL = 0.35
DISCOVERY_MAX_PROXY = 0.3  # 1.01 would be off
# `bias_prompts: auto` keeps at most this many attributes (a grouping option, `discover_top`).
DISCOVER_TOP = 3
# `bias_prompts: auto` with nothing above the threshold: groups from a labeler that needs no phrases.
AUTO_FALLBACK_LABELER = "kmeans"

assert SELECTION_FALLBACK in ("labeler", "worst_class") and SELECTION_FALLBACK in SELECTIONS
assert DISCOVERY_SCORE in DISCOVERY_SCORES and set(DISCOVERY_THRESHOLDS) == set(DISCOVERY_SCORES)
