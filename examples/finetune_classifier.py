"""Fine-tune an acula encoder as a classifier with `Trainer` and LoRA (peft) on a dev-pack task.

    # KAUH lung sounds, normal vs abnormal, patient-grouped split (the pack's `suggested_split`)
    python examples/finetune_classifier.py --model outputs/acula-cpu-small \
        --manifest ../shared/data/auscultation-dev/metadata.csv --source KAUH_lung_sounds --label_column label \
        --output_dir outputs/kauh-classifier

The encoder gets LoRA adapters on its attention, the new linear head is trained in full; the script reports the
validation AUROC and saves the merged classifier, which `pipeline("audio-classification", model=...)` loads.
"""

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoFeatureExtractor, Trainer, TrainingArguments

import modeling_acula  # noqa: F401
from acula_train.manifest import load_manifest
from modeling_acula import AculaForAudioClassification, apply_lora
from modeling_acula.audio_utils import decode_audio


class SpectrogramDataset(torch.utils.data.Dataset):
    """Featurises each recording once, up front (a few hundred recordings fit in memory easily)."""

    def __init__(self, manifest, labels, extractor, batch_size: int = 32):
        self.labels = torch.tensor(labels)
        chunks = []
        for start in range(0, len(manifest), batch_size):
            waves = [decode_audio(p, extractor.sampling_rate, extractor.resample_quality)
                     for p in manifest.audio_paths[start : start + batch_size]]
            chunks.append(extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_values"])
        self.inputs = torch.cat(chunks)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_values": self.inputs[i], "labels": self.labels[i]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="An acula encoder folder (e.g. the output of train_acula.py).")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--source", default="KAUH_lung_sounds", help="Keep rows of this source_dataset.")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--split_column", default="suggested_split")
    parser.add_argument("--output_dir", default="outputs/acula-classifier")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    args = parser.parse_args(argv)

    manifest = load_manifest(args.manifest)
    rows = [i for i, row in enumerate(manifest.rows) if row.get("source_dataset") == args.source]
    names = sorted({manifest.rows[i][args.label_column] for i in rows})
    label2id = {name: i for i, name in enumerate(names)}
    extractor = AutoFeatureExtractor.from_pretrained(args.model)
    splits = {}
    for split in ("train", "val"):
        chosen = manifest.select([i for i in rows if manifest.rows[i][args.split_column] == split])
        splits[split] = SpectrogramDataset(chosen, [label2id[r[args.label_column]] for r in chosen.rows], extractor)

    model = AculaForAudioClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)
    model = apply_lora(model)
    model.print_trainable_parameters()
    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=16, learning_rate=args.learning_rate, logging_steps=5, save_strategy="no",
        report_to=[], seed=0, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=splits["train"])
    trainer.train()

    logits = trainer.predict(splits["val"]).predictions
    probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    labels = splits["val"].labels.numpy()
    if len(names) == 2:
        auroc = roc_auc_score(labels, probabilities[:, 1])
    else:
        auroc = roc_auc_score(labels, probabilities, multi_class="ovr", labels=list(range(len(names))))
    merged = model.merge_and_unload()
    merged.save_pretrained(args.output_dir)
    extractor.save_pretrained(args.output_dir)
    result = {"val_auroc": float(auroc), "val_size": int(len(labels)), "labels": names,
              "val_accuracy": float(np.mean(probabilities.argmax(-1) == labels))}
    print(result)
    return result


if __name__ == "__main__":
    main()
