"""The one place that builds the tiny configs and inputs of the test suite, and the helpers that run train_acula.py
on them (transformers' ModelTester pattern: tests ask for a config instead of spelling one out)."""

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import WhisperConfig

from modeling_acula import AculaConfig

REPO = Path(__file__).resolve().parents[1]

# The tiny model of the train_acula.py runs, as the --config_overrides JSON they pass (on the cpu-small preset).
TINY_OVERRIDES = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "decoder_hidden_size": 16,
    "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2, "projection_hidden_size": 32,
    "projection_dim": 16, "projection_dropout": 0.0,
}
TINY = json.dumps(TINY_OVERRIDES)


def tiny_config(**overrides) -> AculaConfig:
    """A few-thousand-parameter native model on the real 256 x 64 spectrogram size."""
    settings = dict(
        patch_size=[16, 16],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        projection_hidden_size=24,
        projection_dim=8,
        projection_dropout=0.0,
        teacher_hidden_size=12,
    )
    settings.update(overrides)
    return AculaConfig(**settings)


def save_tiny_encoder(folder: Path) -> Path:
    """A tiny native `AculaModel` (seed 0) and the default feature extractor, saved as a Hub-style folder."""
    from modeling_acula import AculaFeatureExtractor, AculaModel

    torch.manual_seed(0)
    AculaModel(tiny_config()).save_pretrained(folder)
    AculaFeatureExtractor().save_pretrained(folder)
    return folder


def tiny_opera_config(**overrides) -> AculaConfig:
    """The opera-gt preset shrunk to a tiny width and depth (the OPERA-GT converter's layout)."""
    settings = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": [16, 16]}
    return AculaConfig.from_preset("opera-gt", **{**settings, **overrides})


def tiny_whisper_config(**overrides) -> WhisperConfig:
    """A tiny random Whisper (encoder and decoder, as a converted checkpoint holds both) with 80 mel bins."""
    settings = dict(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                    max_source_positions=1500, vocab_size=64, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2, decoder_start_token_id=1)
    return WhisperConfig(**{**settings, **overrides})


def tiny_whisper_backbone_config(window_seconds: float = 2.0, **overrides) -> AculaConfig:
    """An acula config around a tiny Whisper encoder on a short window (a truncated position table), as
    `AculaForPreTraining.from_audio_backbone` writes one (masked-audio modeling is native-only)."""
    whisper = tiny_whisper_config(max_source_positions=int(window_seconds * 50))
    settings = dict(audio_backbone_config=whisper.to_dict(), use_mam=False, projection_hidden_size=24,
                    projection_dim=8, projection_dropout=0.0, teacher_hidden_size=12)
    return AculaConfig(**{**settings, **overrides})


def spectrograms(batch: int = 4, seed: int = 0, size: tuple[int, int] = (256, 64)) -> torch.Tensor:
    """Random log-mel-like input (batch, 1, time, mel), reproducible from `seed`."""
    return torch.rand(batch, 1, *size, generator=torch.Generator().manual_seed(seed))


def write_audiofolder(folder: Path, splits: dict[str, list[dict]], columns: Sequence[str]) -> Path:
    """`datasets`' audiofolder layout: for each split, `folder/<split>/` holding a copy of each row's `source` file and
    a metadata.csv of `file_name` then `columns` (taken from the rows, in that order: the order `datasets` lists them).

    Args:
        folder (`Path`): the folder to fill (its split folders must not exist yet).
        splits (`dict`): `{split name: rows}`, each row a dict with `source` (an audio file) and every one of `columns`.
        columns (`Sequence[str]`): the metadata columns after `file_name`.
    """
    for split, rows in splits.items():
        (folder / split).mkdir(parents=True)
        with open(folder / split / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", *columns])
            for row in rows:
                shutil.copy(row["source"], folder / split / row["source"].name)
                writer.writerow([row["source"].name, *(row[column] for column in columns)])
    return folder


class AculaModelTester:
    """Tiny configs with matching inputs, for one backbone kind.

    Args:
        backbone (`str`): "native" (the ViT) or "whisper" (a tiny Whisper encoder on a 2 s window).
        batch_size (`int`): rows of the inputs.
        seed (`int`): seed of the inputs.
    """

    BACKBONES = ("native", "whisper")

    def __init__(self, backbone: str = "native", batch_size: int = 4, seed: int = 0):
        if backbone not in self.BACKBONES:
            raise ValueError(f"backbone must be one of {self.BACKBONES}, got {backbone!r}")
        self.backbone, self.batch_size, self.seed = backbone, batch_size, seed

    def get_config(self, **overrides) -> AculaConfig:
        if self.backbone == "whisper":
            return tiny_whisper_backbone_config(**overrides)
        return tiny_config(**overrides)

    def input_size(self, config: AculaConfig) -> tuple[int, int]:
        """(time, mel) of the spectrograms `config` takes."""
        if self.backbone == "whisper":
            whisper = config.audio_backbone_config
            return 2 * whisper.max_source_positions, whisper.num_mel_bins
        return tuple(config.spectrogram_size)

    def prepare_config_and_inputs(self, **overrides) -> tuple[AculaConfig, dict[str, torch.Tensor]]:
        config = self.get_config(**overrides)
        inputs = spectrograms(self.batch_size, self.seed, self.input_size(config))
        return config, {"input_values": inputs}


# --- train_acula.py on the tiny model --------------------------------------------------------------------------


@functools.cache
def tiny_start() -> Path:
    """A tiny native alignment model saved once per test session: the "pretrained" start of the tiny runs (LoRA
    adapters on random weights are refused, so a LoRA run needs a start)."""
    from modeling_acula import AculaForPreTraining

    folder = Path(tempfile.mkdtemp(prefix="acula-tiny-start-")) / "tiny-start"
    torch.manual_seed(0)
    AculaForPreTraining(AculaConfig.from_preset("cpu-small", **TINY_OVERRIDES)).save_pretrained(folder)
    return folder


def tiny_args(output_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--cache_dir", str(cache_dir), "--config_overrides", TINY,
        "--preset", "cpu-small", "--init_from", str(tiny_start()),
        "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--lora_dropout", "0", *extra,
    ]


def run_in_process(args: list[str]) -> Path:
    # Imported here: the model tests import this module and must not load the training app.
    from accelerate.state import AcceleratorState, PartialState

    import train_acula

    try:
        return train_acula.main(args)
    finally:  # Accelerate's state is a process-wide singleton
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()


def run_script(args: list[str], *, processes: int = 1, env: dict | None = None,
               script: Path = REPO / "train_acula.py") -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if processes == 1:
        command = [sys.executable, str(script), *args]
    else:  # real multi-process DDP on gloo (see ENVIRONMENT.md: --cpu alone would run one process)
        environment["ACCELERATE_USE_CPU"] = "true"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(29500 + os.getpid() % 1000), str(script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, cwd=REPO)


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
