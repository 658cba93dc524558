"""grouping."""
