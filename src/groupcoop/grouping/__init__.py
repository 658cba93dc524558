"""Where a run's groups come from: `options` (the settings), `labelers` (the group sources: gt,
zeroshot, kmeans, pseudo; each says whether it names its groups), `pseudo` and `adaptive` (the
pseudo-label variants), `quality` (labels against true groups), `discovery` (bias attributes found
on the training split), `labelfree` (what a run without bias labels falls back on) and `plan` (the
group plan a method trains and selects on)."""
