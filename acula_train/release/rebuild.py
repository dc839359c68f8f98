"""Rebuild the full `from_pretrained` folder of a release, offline, from its delta and its base: the start is made
again with acula's converter, refused unless its weights hash is the recorded one; the delta is applied, and the
result is refused unless its weights hash is the one recorded at export."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from modeling_acula import AculaConfig, AculaFeatureExtractor

from ..prefix_cache import state_dict_sha256
from .base import ReleaseBase, build_start, check_base
from .delta import EXTRA_WEIGHTS, apply_delta
from .export import ALIGNMENT_WEIGHTS, MODEL_WEIGHTS
from .folders import folder_megabytes, staged_folder
from .manifest import MANIFEST_NAME, ReleaseError, read_manifest

# Delta files that are inputs of the rebuild only: they are in the rebuilt weights.
NOT_COPIED = frozenset({EXTRA_WEIGHTS})


def _check_weights(name: str, actual: str, manifest: dict[str, Any]) -> None:
    recorded = manifest["weights"][name]["sha256"]
    if actual != recorded:
        raise ReleaseError(
            f"the rebuilt {name} has weights sha256 {actual}, the release records {recorded} (exported with "
            f"{manifest.get('versions')}, {manifest.get('merge_dtype')} merge): the base matched, so the adapter merge "
            "computes differently here (another torch or CPU kernel); export the release with --merge_dtype float64, "
            "which rebuilds the same on every machine"
        )


def rebuild_release(release_dir: str | os.PathLike, output: str | os.PathLike, *,
                    whisper_dir: str | os.PathLike | None = None, overwrite: bool = False,
                    log: Callable[[str], None] = print) -> Path:
    """Rebuild a release's model folder, which `AutoModel.from_pretrained` loads.

    Args:
        release_dir (`str` or `os.PathLike`): the release (delta) folder, e.g. `releases/acula-whisper-base`.
        output (`str` or `os.PathLike`): the folder to write.
        whisper_dir (`str` or `os.PathLike`, *optional*): a Whisper folder as the base; default: the installed
            Whisper-base wheels, converted offline into a temporary folder.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output`.
        log (`Callable[[str], None]`, *optional*): where progress goes.

    Returns:
        `Path`: the rebuilt folder (README.md is the release card).

    Raises:
        [`ReleaseError`]: a delta file is missing or altered, the base's or the result's weights hash differs.
    """
    started = time.perf_counter()
    release_dir, output = Path(release_dir), Path(output)
    log(f"[1/4] Checking {release_dir} against its {MANIFEST_NAME} ...")
    manifest = read_manifest(release_dir)
    config = AculaConfig.from_pretrained(release_dir / "alignment")

    recorded = ReleaseBase.from_dict(manifest["base"])
    log(f"[2/4] Rebuilding the base ({recorded.source}, window {recorded.window_seconds:g} s) ...")
    start, base = build_start(config, whisper_dir, log)
    check_base(recorded, base)
    log(f"      base weights sha256 {base.weights_sha256} (as recorded)")

    log("[3/4] Applying the delta ...")
    model = apply_delta(config, start, release_dir, merge_dtype=manifest.get("merge_dtype", "float32"))
    _check_weights(MODEL_WEIGHTS, state_dict_sha256(model.acula.state_dict()), manifest)
    _check_weights(ALIGNMENT_WEIGHTS, state_dict_sha256(model.state_dict()), manifest)

    log(f"[4/4] Writing {output} ...")
    with staged_folder(output, overwrite) as staging:
        model.save_pretrained(staging / "alignment")  # encoder + heads, for retrieval or more alignment
        model.acula.save_pretrained(staging)  # the merged encoder: what AutoModel loads
        AculaFeatureExtractor.from_pretrained(release_dir).save_pretrained(staging)  # with its code, as a run writes it
        for relative in manifest["files"]:
            if relative not in NOT_COPIED:  # the release's own configs, card and records, byte for byte
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(release_dir / relative, staging / relative)
        shutil.copyfile(release_dir / MANIFEST_NAME, staging / MANIFEST_NAME)  # where the folder came from
        for name in (MODEL_WEIGHTS, ALIGNMENT_WEIGHTS):  # what was written is what was checked
            _check_weights(name, state_dict_sha256(load_file(str(staging / name))), manifest)
        size = folder_megabytes(staging)
    log(f"Rebuilt {output} ({size:.1f} MB) in {time.perf_counter() - started:.1f} s; weights sha256 "
        f"{manifest['weights'][MODEL_WEIGHTS]['sha256']} as recorded")
    return output


__all__ = ["rebuild_release"]
