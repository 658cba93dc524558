"""`groupcoop predict` (classify new images with a run) and `export` (a run's classifier for plain open_clip)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .args import add_offline_flag, add_threads_flag, count, workers

# --- predict ---------------------------------------------------------------------------------

def add_predict(pr) -> None:
    pr.add_argument("run", help="run folder written by `groupcoop train`, or a folder written by `groupcoop export`")
    pr.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    pr.add_argument("--csv", help="a CSV listing images (instead of --images)")
    pr.add_argument("--root", help="with --csv: the folder its paths are relative to")
    pr.add_argument("--path-col", default="path", help="with --csv: the column of image paths (default path)")
    pr.add_argument("--allow-symlinks-outside", action="store_true",
                    help="with --csv: read images whose symlinks lead outside --root (refused by default)")
    pr.add_argument("--out", required=True, help="predictions CSV to write")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    pr.add_argument("--strict", action="store_true", help="any unreadable image: exit 2 and write nothing")
    pr.add_argument("--pretrained", help="the weights file, when the run's weights file has moved")
    pr.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:N or mps")
    pr.add_argument("--batch-size", type=count(1), default=256, help="images per batch (default 256)")
    pr.add_argument("--workers", type=workers, default=None,
                    help="image-decoding worker processes (default: cores - 1, at most 4)")
    add_threads_flag(pr)
    add_offline_flag(pr)
    pr.add_argument("--quiet", action="store_true", help="no progress bar or lines")


def cmd_predict(args) -> None:
    from ..backbones.families import check_device
    from ..io.folders import check_not_an_input, files_named_like
    from ..io.write import atomic_text, check_output_file
    from ..runs.predict import (
        Classifier,
        find_images,
        images_from_csv,
        predict_files,
        rows_to_csv,
    )

    if bool(args.images) == bool(args.csv):
        raise UserError("give either --images PATH... or --csv FILE --root DIR")
    if args.csv and not args.root:
        raise UserError("--csv needs --root: the folder the CSV's paths are relative to")
    paths = find_images(args.images) if args.images else \
        images_from_csv(Path(args.csv), Path(args.root), args.path_col, args.allow_symlinks_outside)
    inputs = [("the run folder", args.run), ("--csv", args.csv), ("--root", args.root),
              ("--pretrained", args.pretrained), *(("--images", p) for p in args.images or ()),
              *files_named_like(Path(args.out), paths)]
    check_not_an_input(Path(args.out), inputs)  # before --overwrite is asked for: it would not help
    out = check_output_file(Path(args.out), "--out", overwrite=args.overwrite)
    check_device(args.device or "cpu")
    classifier = Classifier.from_run(args.run, device=args.device or "cpu", pretrained=args.pretrained)
    rows, failures = predict_files(classifier, paths, batch_size=args.batch_size, workers=args.workers,
                                   progress=not args.quiet)
    if failures and args.strict:
        first = next(r for r in rows if r["error"])
        raise UserError(f"{failures} of {len(rows)} images could not be read (first: {first['error']}); "
                        f"nothing written (--strict)")
    atomic_text(out, rows_to_csv(rows), "--out")
    print(f"predicted {len(rows) - failures} of {len(rows)} images"
          + (f"; {failures} could not be read (see the error column)" if failures else "") + f"; wrote {out}")


# --- export ----------------------------------------------------------------------------------

def add_export(ex) -> None:
    ex.add_argument("run", help="run folder written by `groupcoop train`")
    ex.add_argument("--out", required=True, help="folder to write (created, with its parents)")
    ex.add_argument("--overwrite", action="store_true", help="replace an --out folder that holds an earlier export")
    ex.add_argument("--pretrained", help="the weights file, when the run's weights file has moved")
    add_offline_flag(ex)


def cmd_export(args) -> None:
    from ..io.folders import check_replaceable, output_lock
    from ..io.write import ensure_writable_dir
    from ..runs.predict import export_head

    out = Path(args.out).expanduser()
    if out.suffix == ".safetensors" and not out.is_dir():
        raise UserError(f"--out {out}: export writes a folder (head.safetensors, and the model files beside it); "
                        f"give a folder name, e.g. --out {out.with_suffix('')}")
    check_replaceable(out, args.overwrite, "export", [("the run folder", args.run), ("--pretrained", args.pretrained)])
    ensure_writable_dir(out.parent, "--out")
    with output_lock(out):
        head = export_head(Path(args.run), out, pretrained=args.pretrained)
    carried = f"the {head.info['library']} model in {out}/{head.info['weights']}" if head.info.get("weights") else \
        f"open_clip's {head.info.get('model')}" + (f" ({head.info['pretrained']})" if head.info.get("pretrained") else "")
    print(f"wrote {out}/head.safetensors: {head.weight.shape[0]} rows x {head.weight.shape[1]} dims, classes "
          f"{', '.join(head.class_names)}, aggregate {head.aggregate}; backbone: {carried}")
