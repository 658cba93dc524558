"""Reading users' files safely and writing every output: `read`, `write` (atomic files), `folders`
(output folders, manifests, what --overwrite may replace), `csv_safe` (CSV cells), `environment`
(the GROUPCOOP_* variables)."""
