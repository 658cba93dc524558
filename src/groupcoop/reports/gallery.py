"""Per-group image grids: see what each group of a dataset looks like (`groupcoop datasets
check NAME --grid FILE`).

One row per group of the split: the group's name and image count at the left, then up to
`per_group` of its images drawn at random (a local `np.random.default_rng(seed)`, so the
same seed gives the same grid). Small images are enlarged by a whole factor with
nearest-neighbour sampling (their pixels stay sharp); large ones are shrunk to fit. Rows
whose bias labels are missing (group -1) are shown per class instead ("<class>, no bias
label"). An image that cannot be read is skipped, another of the group is tried in its
place, and the row label says how many were skipped. The PNG is written atomically; its text
chunk "groupcoop:rows" holds the rows as JSON: [{"name", "n", "shown", "unreadable"}, ...].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..data.base import SPLITS, GroupDataset
from ..errors import UserError
from ..io.write import atomic_write

CELL = 96  # px: the box each image is fitted into
PAD = 6
LABEL_MIN, LABEL_MAX = 180, 420  # px: width of the label column
FONT_SIZE = 14
MAX_TRIES = 4  # per shown image: how many images of a group may be tried before giving up
BACKGROUND = (255, 255, 255)
STRIPE = (243, 245, 247)
TEXT, MUTED, WARN = (31, 35, 40), (87, 96, 106), (180, 35, 24)


def _font(size: int, bold: bool = False):
    """DejaVu Sans from matplotlib's data (always there with matplotlib), else Pillow's default."""
    try:
        import matplotlib

        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except (ImportError, OSError):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            return ImageFont.load_default()


def _fit(img: Image.Image, cell: int) -> Image.Image:
    img = img.convert("RGB")
    side = max(img.size)
    if side <= cell:
        factor = max(1, cell // side)
        return img.resize((img.width * factor, img.height * factor), Image.NEAREST) if factor > 1 else img
    scale = cell / side
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _rows(dataset: GroupDataset, split: str) -> list[tuple[str, np.ndarray]]:
    """(row name, dataset indices) per row: every group, then per class the unlabelled rows."""
    idx = dataset.split_indices(split)
    groups = dataset.groups[idx]
    labelled = groups >= 0
    rows = []
    if labelled.any() or len(idx) == 0:
        names = dataset.group_names()
        rows += [(names[g], idx[groups == g]) for g in range(dataset.n_groups)]
    if (~labelled).any():
        y = dataset.y[idx]
        rows += [(f"{c}, no bias label", idx[(~labelled) & (y == k)])
                 for k, c in enumerate(dataset.class_names) if ((~labelled) & (y == k)).any()]
    return rows


def _load_some(dataset: GroupDataset, members: np.ndarray, want: int, rng) -> tuple[list[Image.Image], int]:
    """Up to `want` readable images of `members`, in random order; (images, unreadable count)."""
    images, bad = [], 0
    for i in rng.permutation(members)[: want * MAX_TRIES]:
        if len(images) == want:
            break
        try:
            images.append(_fit(dataset.images.load(int(i)), CELL))
        except Exception:  # noqa: BLE001 - any unreadable image (UserError, OSError, decoder errors) is skipped
            bad += 1
    return images, bad


def group_grid(dataset: GroupDataset, path, split: str = "train", per_group: int = 8, seed: int = 0) -> Path:
    """Write a PNG with one row per group of `split` (name, count, up to `per_group` random
    images) and return its path."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    if per_group < 1:
        raise UserError("--per-group must be at least 1")
    title = f"{dataset.name}: {split} split, up to {per_group} random images per group (seed {seed})"
    canvas, info = rows_grid(dataset, _rows(dataset, split), title, split, per_group, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG", pnginfo=info, optimize=True))
    return path


def rows_png(dataset: GroupDataset, rows: list[tuple[str, np.ndarray]], title: str, split: str = "train",
             per_group: int = 8, seed: int = 0) -> bytes:
    """`rows_grid` as PNG bytes (a run's example grid of the groups it made, embedded in its report)."""
    import io

    canvas, info = rows_grid(dataset, rows, title, split, per_group, seed)
    out = io.BytesIO()
    canvas.save(out, format="PNG", pnginfo=info, optimize=True)
    return out.getvalue()


def unnamed_grid(dataset: GroupDataset, candidate: dict, path: Path) -> Path:
    """Example training images of each class x value of discovery's unnamed candidate (its per-image
    `assigned` values), as a PNG at `path` (`groupcoop discover --grid`)."""
    rows = dataset.split_indices("train")
    y, values = dataset.y[rows], candidate["assigned"]
    members = [(f"{name}, {candidate['attribute']} {v}", rows[(y == k) & (values == j)])
               for k, name in enumerate(dataset.class_names) for j, v in enumerate(candidate["value_names"])]
    title = f"{dataset.name}: training images of each class x value of {candidate['attribute']} (up to 8 per row)"
    canvas, info = rows_grid(dataset, members, title, "train", 8, 0)
    atomic_write(Path(path), lambda tmp: canvas.save(tmp, format="PNG", pnginfo=info, optimize=True))
    return Path(path)


def rows_grid(dataset: GroupDataset, named_rows: list[tuple[str, np.ndarray]], title: str, split: str,
              per_group: int, seed: int) -> tuple[Image.Image, PngInfo]:
    """The grid of (row name, dataset indices) rows: name and count at the left, then up to
    `per_group` random images of the row."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, members in named_rows:
        images, bad = _load_some(dataset, members, per_group, rng)
        rows.append({"name": name, "n": len(members), "images": images, "bad": bad})

    font, bold, small = _font(FONT_SIZE), _font(FONT_SIZE, bold=True), _font(FONT_SIZE - 2)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text, f):
        left, _, right, _ = measure.textbbox((0, 0), text, font=f)
        return right - left

    def lines(row):
        out = [(row["name"], bold, TEXT), (f"{row['n']:,} images in {split}", font, MUTED)]
        if row["bad"]:
            out.append((f"{row['bad']} unreadable, skipped", small, WARN))
        return out

    label_w = max([LABEL_MIN] + [width(t, f) + 2 * PAD for r in rows for t, f, _ in lines(r)])
    label_w = min(label_w, LABEL_MAX)
    n_cols = max([1] + [len(r["images"]) for r in rows])
    n_cols = max(n_cols, 2) if any(not r["images"] for r in rows) else n_cols  # room for "no images"
    line_h = FONT_SIZE + 6
    row_h = max(CELL, 3 * line_h) + 2 * PAD
    title_h = line_h + 2 * PAD
    grid_w = n_cols * (CELL + PAD) + PAD
    total_w = max(label_w + grid_w, width(title, bold) + 2 * PAD)
    canvas = Image.new("RGB", (total_w, title_h + row_h * max(1, len(rows))), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, font=bold, fill=TEXT)

    for r, row in enumerate(rows):
        top = title_h + r * row_h
        if r % 2 == 0:
            draw.rectangle([0, top, total_w, top + row_h - 1], fill=STRIPE)
        y = top + PAD
        for text, f, colour in lines(row):
            while width(text, f) > label_w - 2 * PAD and len(text) > 4:  # too long: cut with an ellipsis
                text = text[:-2] + "…"
            draw.text((PAD, y), text, font=f, fill=colour)
            y += line_h
        for c, img in enumerate(row["images"]):
            x0 = label_w + PAD + c * (CELL + PAD)
            y0 = top + PAD + (row_h - 2 * PAD - CELL) // 2
            canvas.paste(img, (x0 + (CELL - img.width) // 2, y0 + (CELL - img.height) // 2))
        if not row["images"]:
            message = "no images" if row["n"] == 0 else "no readable images"
            draw.text((label_w + PAD, top + row_h // 2 - FONT_SIZE // 2), message, font=font, fill=MUTED)
    if not rows:
        draw.text((PAD, title_h + PAD), "no groups", font=font, fill=MUTED)

    info = PngInfo()
    info.add_text("groupcoop:rows", json.dumps(
        [{"name": r["name"], "n": r["n"], "shown": len(r["images"]), "unreadable": r["bad"]} for r in rows]))
    return canvas, info
