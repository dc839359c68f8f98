"""Extract one embedding per recording with any acula encoder (AutoModel + AutoFeatureExtractor).

    python examples/extract_embeddings.py --model outputs/acula-cpu-small \
        --manifest data/auscultation-mini/metadata.csv --output embeddings.safetensors

Recordings longer than the model's 8.19 s window are cut into sliding windows whose embeddings are averaged.
The result is a safetensors file with `embeddings` (recordings x hidden size) and, as metadata, the files in order.
"""

import argparse
import json

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoFeatureExtractor, AutoModel

import modeling_acula  # noqa: F401  (registers the AcuLa Auto classes)
from modeling_acula.manifest import decode_audio, load_manifest


def embed_files(model, extractor, paths, batch_size: int = 16, device: str = "cpu") -> torch.Tensor:
    """Batched, windowed embedding of audio files: decode a batch, featurise every window on `device`, run the
    encoder once, then average the windows of each recording."""
    model = model.to(device).eval()
    embeddings = []
    for start in tqdm(range(0, len(paths), batch_size), desc="embedding", unit="batch"):
        waveforms = [decode_audio(path, extractor.sampling_rate) for path in paths[start : start + batch_size]]
        inputs = extractor(waveforms, sampling_rate=extractor.sampling_rate, sliding_window=True,
                           return_tensors="pt", device=device)
        with torch.inference_mode():
            windows = model(input_values=inputs["input_values"].to(device)).pooler_output
        index = inputs["recording_index"].to(device)
        sums = torch.zeros(len(waveforms), windows.shape[1], device=device).index_add_(0, index, windows)
        counts = torch.bincount(index, minlength=len(waveforms)).unsqueeze(1)
        embeddings.append((sums / counts).cpu())
    return torch.cat(embeddings)


def main(argv=None) -> torch.Tensor:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Folder or Hub id of an acula encoder.")
    parser.add_argument("--manifest", required=True, help="CSV/JSONL/datasets manifest with an audio path column.")
    parser.add_argument("--audio_column", default="file")
    parser.add_argument("--output", default="embeddings.safetensors")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    model = AutoModel.from_pretrained(args.model)
    extractor = AutoFeatureExtractor.from_pretrained(args.model)
    manifest = load_manifest(args.manifest, audio_column=args.audio_column)
    embeddings = embed_files(model, extractor, manifest.audio_paths, args.batch_size, args.device)
    files = [str(row[args.audio_column]) for row in manifest.rows]
    save_file({"embeddings": embeddings.contiguous()}, args.output, metadata={"files": json.dumps(files)})
    print(f"{embeddings.shape[0]} embeddings of size {embeddings.shape[1]} written to {args.output}")
    return embeddings


if __name__ == "__main__":
    main()
