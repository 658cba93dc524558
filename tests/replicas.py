"""Miniature replicas of the real benchmark layouts, written into a temporary folder.

Real file names, headers, encodings and line endings; tiny 8x8 images written with Pillow.
Every split of every replica holds every class and every attribute value.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

# CelebA's 40 attributes in the order of list_attr_celeba.txt
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
SPLIT_NAMES = ("train", "val", "test")


def write_image(path: Path, seed: int = 0) -> None:
    """An 8x8 image; the suffix picks the format (.jpg/.JPEG -> JPEG, .png -> PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", (8, 8), color).save(path, format=fmt)


def write_text(path: Path, lines: list[str], newline: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode())


def rows_from_counts(counts: dict[str, list[int]], seed: int = 0) -> list[tuple[int, int]]:
    """(split code, group) rows, n of each per split as given, in a shuffled file order."""
    rows = [(s, g) for s, name in enumerate(SPLIT_NAMES) for g, n in enumerate(counts[name]) for _ in range(n)]
    random.Random(seed).shuffle(rows)
    return rows


# ---------------------------------------------------------------- Waterbirds

WATERBIRDS_COUNTS = {"train": [3, 2, 1, 2], "val": [1, 2, 1, 1], "test": [2, 1, 1, 2]}
_SPECIES = {0: "010.Red_winged_Blackbird/Red_Winged_Blackbird", 1: "001.Black_footed_Albatross/Black_Footed_Albatross"}
_PLACES = {0: "/f/forest/", 1: "/o/ocean/"}


def waterbirds_replica(tmp: Path, counts=WATERBIRDS_COUNTS, wilds: bool = False) -> Path:
    folder = tmp / ("waterbirds_v1.0" if wilds else "waterbird_complete95_forest2water2")
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (split, g) in enumerate(rows_from_counts(counts), start=1):
        y, place = divmod(g, 2)
        filename = f"{_SPECIES[y]}_{i:04d}_{1000 + i}.jpg"
        write_image(folder / filename, i)
        lines.append(f"{i},{filename},{y},{split},{place},{_PLACES[place]}{i:08d}.jpg")
    write_text(folder / "metadata.csv", lines)
    if wilds:
        write_text(folder / "RELEASE_v1.0.txt", ["Waterbirds v1.0"])
    return folder


# ---------------------------------------------------------------- CelebA

CELEBA_COUNTS = {"train": [4, 3, 2, 1], "val": [2, 1, 1, 1], "test": [1, 2, 1, 1]}  # Blond_Hair x Male


def celeba_rows(counts=CELEBA_COUNTS, attributes=("Blond_Hair", "Male"), seed: int = 0) -> list[dict]:
    """Rows {"split": s, attribute: 0/1, ...}; group g = 2^k*y + a1 + 2*a2 ... over `attributes`
    (the first is the target); the other attributes follow fixed patterns that give every
    split (of at least 5 rows) both values."""
    rows = []
    k = len(attributes) - 1
    seen = [0, 0, 0]  # rows so far per split, so the alternation covers each split
    for split, g in rows_from_counts(counts, seed):
        i, seen[split] = seen[split], seen[split] + 1
        row = {"split": split}
        # periods 2, 4 and 8 rows: varied, yet both values in any split of 5 or more rows
        row.update({a: ((i >> (j % 3)) + j) % 2 for j, a in enumerate(CELEBA_ATTRIBUTES)})
        row.update({a: (i >> j) % 2 for j, a in enumerate(("Young", "Male", "Mouth_Slightly_Open"))})
        y, code = divmod(g, 2**k)
        row[attributes[0]] = y
        for j, a in enumerate(attributes[1:]):
            row[a] = (code >> j) & 1
        rows.append(row)
    return rows


def celeba_replica(tmp: Path, rows: list[dict], form: str = "official", nested: bool = False) -> Path:
    """form "official": the .txt files (multiple spaces, LF); "kaggle": the CSVs (CRLF)."""
    folder = tmp / "celeba"
    image_dir = folder / "img_align_celeba" / ("img_align_celeba" if nested else "")
    names = [f"{i:06d}.jpg" for i in range(1, len(rows) + 1)]
    for i, name in enumerate(names):
        write_image(image_dir / name, i)
    values = [[1 if row[a] else -1 for a in CELEBA_ATTRIBUTES] for row in rows]
    if form == "official":
        attr_lines = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES) + " "]
        attr_lines += [f"{n} " + " ".join(f"{v:2d}" for v in vals) for n, vals in zip(names, values)]
        write_text(folder / "list_attr_celeba.txt", attr_lines)
        write_text(folder / "list_eval_partition.txt", [f"{n} {row['split']}" for n, row in zip(names, rows)])
    else:
        attr_lines = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        attr_lines += [n + "," + ",".join(str(v) for v in vals) for n, vals in zip(names, values)]
        write_text(folder / "list_attr_celeba.csv", attr_lines, newline="\r\n")
        partition = [f"{n},{row['split']}" for n, row in zip(names, rows)]
        random.Random(1).shuffle(partition)  # joined by name, not by position
        write_text(folder / "list_eval_partition.csv", ["image_id,partition", *partition], newline="\r\n")
    return folder


# ---------------------------------------------------------------- MultiCelebA

# per (High_Cheekbones, Young, Male) cell g = 4*y + Young + 2*Male
MULTICELEBA_COUNTS = {"train": [3, 2, 4, 2, 3, 4, 1, 1], "val": [1] * 8, "test": [1] * 8}
MULTICELEBA_SMALL_N = {0: 2, 1: 1, 2: 3, 3: 2, 4: 2, 5: None, 6: 1, 7: 2}


def multiceleba_rows(counts=MULTICELEBA_COUNTS) -> list[dict]:
    return celeba_rows(counts, attributes=("High_Cheekbones", "Young", "Male"), seed=3)


# ---------------------------------------------------------------- SubpopBench

METASHIFT_COUNTS = {"train": [2, 1, 1, 2], "val": [1, 1, 1, 1], "test": [1, 1, 2, 1]}  # g = 2*y + a
_METASHIFT_DIRS = {(1, 1): "train/cat/cat(indoor)", (0, 0): "train/dog/dog(outdoor)",
                   (1, 0): "test/cat/cat(outdoor)", (0, 1): "test/dog/dog(indoor)"}


def metashift_replica(tmp: Path) -> Path:
    """SubpopBench's MetaShift: `filename,y,a,split` with absolute paths, as its script writes."""
    folder = tmp / "metashift"
    lines = ["filename,y,a,split"]
    for i, (split, g) in enumerate(rows_from_counts(METASHIFT_COUNTS, seed=4)):
        y, a = divmod(g, 2)
        path = folder / "MetaShift-Cat-Dog-indoor-outdoor" / _METASHIFT_DIRS[(y, a)] / f"{i:05d}.jpg"
        write_image(path, i)
        lines.append(f"{path},{y},{a},{split}")
    write_text(folder / "metadata_metashift.csv", lines)
    return folder


GENERIC_COUNTS = {"train": [2, 1, 1, 1, 1, 2], "val": [1] * 6, "test": [1] * 6}  # 3 classes x 2 attrs


def generic_subpop_replica(tmp: Path) -> Path:
    """An unknown dataset in the `id,filename,split,y,a` form, relative PNG paths."""
    folder = tmp / "mydata"
    lines = ["id,filename,split,y,a"]
    for i, (split, g) in enumerate(rows_from_counts(GENERIC_COUNTS, seed=5), start=1):
        y, a = divmod(g, 2)
        write_image(folder / "images" / f"{i}.png", i)
        lines.append(f"{i},images/{i}.png,{split},{y},{a}")
    write_text(folder / "metadata_mydata.csv", lines)
    return folder


IMAGENETBG_CLASSES = ("dog", "bird", "wheeled vehicle", "reptile", "carnivore", "insect", "musical instrument",
                      "primate", "fish")


def imagenetbg_replica(tmp: Path) -> Path:
    """ImageNet-BG: split names (plus evaluation-only mixed_rand), no `a` column."""
    folder = tmp / "backgrounds_challenge"
    dirs = {"train": "in9l/train", "val": "in9l/val", "test": "bg_challenge/original/val",
            "mixed_rand": "bg_challenge/mixed_rand/val"}
    lines = ["split,filename,y"]
    for split, sub in dirs.items():
        for y, name in enumerate(IMAGENETBG_CLASSES):
            path = folder / sub / f"0{y}_{name}" / f"{split}_{y}.JPEG"
            write_image(path, y)
            lines.append(f"{split},{path},{y}")
    write_text(folder / "metadata.csv", lines)
    return folder


def chexpert_replica(tmp: Path) -> Path:
    """CheXpert no-finding: many extra columns, a = sex x race (6 values), one row per group per split."""
    folder = tmp / "chexpert"
    lines = ["Path,Sex,Age,No Finding,filename,subject_id,PRIMARY_RACE,ethnicity,a,y,split"]
    i = 0
    for split in range(3):
        for y in range(2):
            for a in range(6):
                i += 1
                rel = f"train/patient{i:05d}/study1/view1_frontal.jpg"
                write_image(folder / rel, i)
                sex = "Male" if a % 2 == 0 else "Female"
                no_finding = "1.0" if y else ""  # CheXpert leaves negatives blank
                lines.append(
                    f"CheXpert-v1.0-small/{rel},{sex},60,{no_finding},{folder / rel},{i},White,{a // 2},{a},{y},{split}"
                )
    write_text(folder / "subpop_bench_meta" / "metadata_no_finding.csv", lines)
    return folder


NICOPP_CONTEXTS = ("autumn", "dim", "grass", "outdoor", "rock", "water")


def nicopp_replica(tmp: Path) -> Path:
    """NICO++: 2 classes x 6 contexts, one row per group per split; class names in a JSON mapping."""
    folder = tmp / "nicopp"
    lines = ["filename,y,a,split"]
    for split in range(3):
        for y, label in enumerate(("bear", "bird")):
            for a, context in enumerate(NICOPP_CONTEXTS):
                path = folder / "public_dg_0416" / "train" / context / label / f"{split}.jpg"
                write_image(path, a)
                lines.append(f"{path},{y},{a},{split}")
    write_text(folder / "metadata.csv", lines)
    write_text(folder / "dg_label_id_mapping.json", ['{"bird": 1, "bear": 0}'])
    return folder


# ---------------------------------------------------------------- custom CSV

CSV_COUNTS = {"train": [2, 1, 1, 3], "val": [1, 1, 1, 1], "test": [1, 2, 1, 1]}  # cat/dog x indoor/outdoor


def csv_replica(tmp: Path) -> Path:
    """Images plus labels.csv with string labels and split names."""
    folder = tmp / "custom"
    lines = ["image,animal,background,fold"]
    for i, (split, g) in enumerate(rows_from_counts(CSV_COUNTS, seed=6)):
        y, a = divmod(g, 2)
        write_image(folder / "pics" / f"{i}.png", i)
        lines.append(f"pics/{i}.png,{('cat', 'dog')[y]},{('indoor', 'outdoor')[a]},{SPLIT_NAMES[split]}")
    write_text(folder / "labels.csv", lines)
    return folder
