#!/usr/bin/env python
"""Write the frozen starting encoder of an alignment run as an acula encoder folder, for evaluation beside the runs
that start from it (the "frozen start" row of every results table).

    python scripts/export_start_encoder.py outputs/whisper-base-frozen-10s --window_seconds 10
    python scripts/export_start_encoder.py outputs/whisper-base-frozen-30s --window_seconds 30

Without --backbone it converts the installed Whisper-base wheels into the acula cache first (as train_acula.py does).
The folder holds the Whisper encoder wrapped by `AculaModel` (the position table cut to the window) and the matching
`AculaFeatureExtractor`: `AutoModel` / `AutoFeatureExtractor` load it, and eval_acula.py embeds it like any run.
"""

import argparse
from pathlib import Path

from modeling_acula.convert_whisper import ensure_whisper_base, save_whisper_as_acula
from modeling_acula.file_utils import acula_cache_dir


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="folder to write")
    parser.add_argument("--backbone", default=None, help="a Whisper folder (default: the converted Whisper-base)")
    parser.add_argument("--window_seconds", type=float, default=10.0, help="input window (Whisper's own: 30)")
    args = parser.parse_args(argv)
    backbone = args.backbone or str(ensure_whisper_base(acula_cache_dir("pretrained"), include_decoder=False))
    output = save_whisper_as_acula(backbone, args.output_dir, args.window_seconds)
    print(f"Wrote {output} (Whisper encoder, {args.window_seconds:g} s window)")
    return output


if __name__ == "__main__":
    main()
