"""Datasets: every loader returns one `GroupDataset` value."""

from .base import SPLITS, GroupDataset, ImageSource, PathImages, group_index

__all__ = ["SPLITS", "GroupDataset", "ImageSource", "PathImages", "group_index"]
