"""`python -m acula_train.release export|rebuild` (console script `acula-release`): see the package docstring."""

from __future__ import annotations

import argparse
import sys

from .export import export_release
from .rebuild import rebuild_release


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acula-release", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a trained folder's delta (adapter, heads, readout, card)")
    export.add_argument("--model_dir", required=True, help="the output folder of a LoRA train_acula.py run")
    export.add_argument("--output", required=True, help="the release folder to write, e.g. releases/acula-whisper-base")
    export.add_argument("--name", default=None, help="the release's name (default: the --output folder name)")
    export.add_argument("--model_card", default=None,
                        help="the card (default: model_cards/<name>.md, else model_cards/TEMPLATE.md)")
    export.add_argument("--merge_dtype", default=None, choices=["float32", "float64"],
                        help="how the rebuild merges the adapter (default: float32 where it reproduces the trained "
                        "folder bit for bit, else float64, which rebuilds the same on every machine)")
    rebuild = commands.add_parser("rebuild", help="rebuild the full from_pretrained folder from a release")
    rebuild.add_argument("release_dir", help="the release folder")
    rebuild.add_argument("--output", required=True, help="the model folder to write")
    for sub in (export, rebuild):
        sub.add_argument("--whisper_dir", default=None,
                         help="the Whisper folder of the base (default: the installed Whisper-base wheels, converted)")
        sub.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors exit with status 2 and one line naming the file or hash that differs."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            export_release(args.model_dir, args.output, name=args.name, whisper_dir=args.whisper_dir,
                           model_card=args.model_card, merge_dtype=args.merge_dtype, overwrite=args.overwrite)
        else:
            rebuild_release(args.release_dir, args.output, whisper_dir=args.whisper_dir, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
