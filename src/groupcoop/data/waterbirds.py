"""Waterbirds (Sagawa et al., ICLR 2020): CUB-200-2011 birds pasted onto Places backgrounds.

Layout: the folder made by group_DRO's script, `waterbird_complete95_forest2water2/`, or the
same content as shipped by WILDS, `waterbirds_v1.0/` (which adds `RELEASE_v1.0.txt`):
    metadata.csv                      img_id,img_filename,y,split,place,place_filename
    001.Black_footed_Albatross/*.jpg  200 CUB species folders
The root may be that folder or its parent.

Encodings: y 0 landbird / 1 waterbird; place 0 land / 1 water; split 0 train / 1 val / 2 test.
Groups: g = 2*y + place: 0 landbird-land, 1 landbird-water, 2 waterbird-land, 3 waterbird-water.

Citation: S. Sagawa, P. W. Koh, T. B. Hashimoto, P. Liang, "Distributionally Robust Neural
Networks for Group Shifts", ICLR 2020; WILDS: P. W. Koh et al., ICML 2021.
Licence: images derive from CUB-200-2011 and Places, both for non-commercial research and
educational use; do not redistribute them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import GroupDataset, PathImages
from .metadata import (check_split_coverage, checked_image_paths, header_lines, integer_codes, read_table,
                       require_columns, split_codes)

FOLDER_NAMES = ("waterbird_complete95_forest2water2", "waterbirds_v1.0")
COLUMNS = ("img_filename", "y", "split", "place")


def find_waterbirds_folder(root: Path) -> Path:
    """The folder holding metadata.csv: root itself or one of the known subfolders."""
    for folder in (root, *(root / name for name in FOLDER_NAMES)):
        if (folder / "metadata.csv").is_file():
            return folder
    raise UserError(
        f"{root / 'metadata.csv'} not found; point the root at group_DRO's "
        f"{FOLDER_NAMES[0]}/ or WILDS's {FOLDER_NAMES[1]}/ folder"
    )


def load_waterbirds(root: str | Path) -> GroupDataset:
    """Waterbirds from group_DRO's or WILDS's folder (or its parent); images are only checked to exist."""
    folder = find_waterbirds_folder(Path(root))
    metadata = folder / "metadata.csv"
    frame = read_table(metadata, dtype={"img_filename": str})
    require_columns(frame, COLUMNS, metadata)
    lines = header_lines(len(frame))
    ds = GroupDataset(
        name="waterbirds",
        images=PathImages(
            folder, checked_image_paths(folder, frame["img_filename"].tolist(), metadata, "img_filename", lines)
        ),
        y=integer_codes(frame["y"], metadata, "y", lines, n_values=2),
        attrs=integer_codes(frame["place"], metadata, "place", lines, n_values=2)[:, None],
        split=split_codes(frame["split"], metadata, "split", lines),
        class_names=["landbird", "waterbird"],
        attribute_names=["place"],
        attribute_values=[["land", "water"]],
        attribute_phrases=[["on land", "on water"]],
        info={
            "source": "wilds" if (folder / "RELEASE_v1.0.txt").is_file() else "group_DRO",
            "metadata_file": str(metadata),
        },
    )
    check_split_coverage(ds, metadata)
    return ds
