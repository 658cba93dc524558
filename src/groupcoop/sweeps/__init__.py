"""`groupcoop sweep`: a grid of runs (grid.py), run resumably in parallel (run.py), summarised
(summary.py), and costed before it runs (cost.py, `--dry-run`)."""
