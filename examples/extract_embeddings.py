"""Extract one embedding per recording with any acula encoder (a local folder or a Hub id).

    python examples/extract_embeddings.py --model outputs/acula-cpu-small \
        --manifest data/auscultation-mini/metadata.csv --output embeddings.safetensors

Uses the package's `AudioEmbedder`: batches of files are decoded in background threads while the previous batch is
featurised and embedded; recordings longer than the model's 8.19 s window are cut into sliding windows whose
embeddings are averaged. `--autocast_dtype bfloat16` runs the encoder in bf16 (GPUs, and CPUs with AMX).
The result is a safetensors file with `embeddings` (recordings x hidden size) and, as metadata, the files in order.
"""

import argparse
import json
import os

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import save_file

import modeling_acula  # noqa: F401  (registers the AcuLa Auto classes)
from acula_eval.embeddings import AudioEmbedder
from acula_train.manifest import load_manifest


def main(argv=None) -> torch.Tensor:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Folder or Hub id of an acula encoder.")
    parser.add_argument("--manifest", required=True, help="CSV/JSONL/datasets manifest with an audio path column.")
    parser.add_argument("--audio_column", default="file")
    parser.add_argument("--output", default="embeddings.safetensors")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast_dtype", choices=["bfloat16", "float16"], default=None)
    args = parser.parse_args(argv)

    folder = args.model if os.path.isdir(args.model) else snapshot_download(args.model)
    embedder = AudioEmbedder(folder, device=args.device, batch_size=args.batch_size, cache_dir=False,
                             autocast_dtype=args.autocast_dtype)
    manifest = load_manifest(args.manifest, audio_column=args.audio_column)
    embeddings = torch.from_numpy(embedder.embed_files(manifest.audio_paths, desc="embedding"))
    files = [str(row[args.audio_column]) for row in manifest.rows]
    save_file({"embeddings": embeddings.contiguous()}, args.output, metadata={"files": json.dumps(files)})
    print(f"{embeddings.shape[0]} embeddings of size {embeddings.shape[1]} written to {args.output}")
    return embeddings


if __name__ == "__main__":
    main()
