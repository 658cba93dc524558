"""Backbone names that several modules spell: the bundled model and the transformers family's prefix.
A leaf without torch, so the CLI's help reads the families table without loading a model library."""

TINY = "groupcoop-tiny"  # the bundled model, an open_clip architecture
TRANSFORMERS_PREFIX = "transformers:"
