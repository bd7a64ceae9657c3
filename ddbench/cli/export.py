"""`ddbench-export`: convert a distilled set to a PNG grid, an ImageFolder, an .npz, or a ddbench artifact."""

from __future__ import annotations

import argparse
import os
import sys

from ddbench.utils import DDBenchError, one_line

FORMATS = ("png-grid", "imagefolder", "npz", "ddbench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddbench-export",
        description=(
            "Export a distilled set. ARTIFACT is a ddbench artifact directory, a reference-format folder "
            "(images_best.pt, labels_best.pt, optional lr_best.pt) or an ImageFolder (<dir>/<class>/*.png); "
            "the last two need --dataset."
        ),
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help="artifact directory, reference folder or ImageFolder")
    parser.add_argument(
        "--format", required=True, choices=FORMATS,
        help="png-grid: one PNG, a row per class; imagefolder: <out>/<class>/<i>.png; npz: numpy arrays + meta; "
        "ddbench: save as a ddbench artifact directory (to import reference/ImageFolder folders)",
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="output file (png-grid, npz) or directory")
    parser.add_argument("--dataset", metavar="NAME", default=None, help="dataset the images come from (for imports)")
    parser.add_argument("--force", action="store_true", help="replace an existing output (refused otherwise)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ddbench.artifact import export_imagefolder, export_npz, export_png_grid, load_artifact, save_artifact

    try:
        if os.path.lexists(args.out) and not args.force:
            raise DDBenchError(f"{args.out} already exists; pass --force to replace it, or choose another --out.")
        artifact = load_artifact(args.artifact, dataset=args.dataset)
        if args.format == "png-grid":
            out = export_png_grid(artifact, args.out)
        elif args.format == "imagefolder":
            out = export_imagefolder(artifact, args.out)
        elif args.format == "npz":
            out = export_npz(artifact, args.out)
        else:
            out = save_artifact(artifact, args.out)
    except (DDBenchError, OSError) as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    print(f"wrote {args.format} ({artifact.dataset}, ipc={artifact.ipc}, {artifact.label_type} labels) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
