"""One run from settings to its folder: `settings` (checked before any work), `pipeline` (check,
prepare, plan, train, evaluate), `fusion` (several prompt runs trained in one pass), `folder`
(the run folder and metrics.json), `predict` (a trained run's classifier, export), `provenance`,
`tracking` (epochs.csv and experiment trackers) and `demo` (the built-in comparison)."""
