"""Reports: the HTML pages of a run, the demo and a sweep (toolkit in `html.py`), and group image grids."""
