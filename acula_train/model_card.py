"""Model cards for aligned encoders, rendered from `templates/model_card.md` with huggingface_hub."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
# The card of a supervised-ceiling run (`acula_train.supervised`): the same encoder folder, another objective.
SUPERVISED_TEMPLATE = Path(__file__).resolve().parent / "templates" / "supervised_model_card.md"


def _data_table(sources: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"| {name} | {info['count']} | {info.get('license') or 'not stated'} |" for name, info in sorted(sources.items())]
    return "\n".join(lines) if lines else "| (none recorded) | | |"


def _evaluation_section(evaluation: Sequence[Mapping[str, Any]] | None) -> str:
    if not evaluation:
        return "No evaluation was run with this training job. Use `eval_acula.py` to add linear-probe results."
    rows = ["| task | dataset | metric | value |", "|---|---|---|---|"]
    rows += [f"| {e['task']} | {e['dataset']} | {e['metric']} | {e['value']:.4f} |" for e in evaluation]
    return "\n".join(rows)


def hub_id_or_none(name: Any) -> str | None:
    """`name` when it reads as a Hub repository id and is no local folder (a local path must neither become
    `base_model` metadata nor be published), else `None`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or Path(str(name)).expanduser().exists() or str(name).startswith(("/", ".", "~")):
        return None
    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return None
    return str(name)


def describe_starting_encoder(init_from: Any) -> str:
    """How a card names the encoder a run started from: its Hub id, or only the folder name of a local path."""
    if not init_from:
        return "randomly initialised (no pretrained encoder given)"
    hub_id = hub_id_or_none(init_from)
    return f"`{hub_id}`" if hub_id else f"a local checkpoint (`{Path(str(init_from)).name}`)"


def describe_encoder(config: Any) -> str:
    """The encoder's architecture in words, with the input window of a Whisper backbone (a truncated position table
    is a choice the card must state)."""
    backbone = getattr(config, "audio_backbone_config", None)
    if backbone is None:
        return (f"ViT on {config.spectrogram_size[0]} x {config.spectrogram_size[1]} log-mel patches of "
                f"{config.patch_size[0]} x {config.patch_size[1]}, width {config.hidden_size}, depth "
                f"{config.num_hidden_layers}")
    if backbone.model_type == "whisper":
        positions = backbone.max_source_positions
        window = ("Whisper's own 30 s window" if positions == 1500 else
                  f"a {positions / 50:g} s window (the first {positions} of Whisper's 1,500 position rows; shorter "
                  "recordings are padded and only the frames that hold audio are averaged)")
        return (f"Whisper encoder (width {backbone.d_model}, {backbone.encoder_layers} layers, "
                f"{backbone.encoder_attention_heads} heads) on {backbone.num_mel_bins}-bin Whisper log-mels, {window}; "
                "embedding: mean of the encoder frames that hold audio")
    return f"{backbone.model_type} backbone, width {backbone.hidden_size}"


def render_model_card(
    *,
    repo_id: str,
    config: Any,
    run: Mapping[str, Any],
    data_summary: Mapping[str, Any],
    teacher_identity: Mapping[str, Any],
    evaluation: Sequence[Mapping[str, Any]] | None = None,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Render the card of an aligned encoder.

    Args:
        repo_id (`str`): the Hub id (or local folder name) shown in the usage snippet.
        config ([`AculaConfig`]): the encoder's configuration.
        run (`Mapping`): training facts: `init_from`, `adaptation`, `optimisation`, `global_step`, `num_processes`,
            `global_batch_size`, `final_losses` (dict), `window_seconds`.
        data_summary (`Mapping`): what [`summarise_data`] recorded: `manifest` (its file name: a card names no
            path of the training machine), `sources` (name -> count, licence), `reports` (statistics), `leakage`
            (rule -> rows removed).
        teacher_identity (`Mapping`): the teacher's identity (name, revision, layer, pooling, ...).
        evaluation (`Sequence[Mapping]`, *optional*): rows with `task`, `dataset`, `metric`, `value`; written to the
            card's `model-index` as well as to its table.
        template_path (`str` or `os.PathLike`, *optional*): a Jinja template; defaults to the package's.
    """
    objective = dict(run.get("objective") or {})
    supervised = objective.get("kind") == "supervised"
    template_path = Path(template_path or (SUPERVISED_TEMPLATE if supervised else DEFAULT_TEMPLATE))
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template not found: {template_path}")
    eval_results = [
        EvalResult(task_type="audio-classification", dataset_type=e["dataset"], dataset_name=e["dataset"],
                   metric_type=e["metric"], metric_value=float(e["value"]), task_name=e["task"])
        for e in evaluation or []
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license="cc-by-4.0" if data_summary.get("all_cc_by_4") else "other",
        tags=["audio", "medical-audio", "auscultation", "acula", "not-for-diagnosis"],
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
        base_model=hub_id_or_none(run.get("init_from")),
    )
    uses_mam = bool(getattr(config, "use_mam", False))
    reports = data_summary.get("reports", {})
    leakage = data_summary.get("leakage", {})
    final_losses = ", ".join(f"{name} {value:.4f}" for name, value in run.get("final_losses", {}).items())
    teacher_description = (
        f"`{teacher_identity.get('name') or teacher_identity.get('name_or_path')}`"
        + (f" (revision {teacher_identity['revision']})" if teacher_identity.get("revision") else "")
        + f", layer {teacher_identity.get('layer')}, {teacher_identity.get('pooling')} pooling, "
        f"hidden size {teacher_identity.get('hidden_size')}, max {teacher_identity.get('max_length')} tokens"
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        hidden_size=getattr(config, "audio_embedding_size", "?"),
        window_seconds=run.get("window_seconds", "8.19"),
        init_description=describe_starting_encoder(run.get("init_from")),
        encoder_description=describe_encoder(config),
        teacher_description=teacher_description,
        alignment_loss=config.alignment_loss,
        alignment_loss_weight=config.alignment_loss_weight,
        ssl_description=(
            f"masked-audio modeling (mask ratio {config.mask_ratio})" if uses_mam else f"{config.preservation_loss}"
        ),
        ssl_weight=config.mam_loss_weight if uses_mam else config.preservation_loss_weight,
        decoder_note=("; its decoder is acula's plain transformer started from random weights, not the pretrained "
                      "OPERA-GT Swin decoder of the released recipe" if uses_mam else ""),
        adaptation_description=run.get("adaptation", ""),
        optimisation_description=run.get("optimisation", ""),
        global_step=run.get("global_step", 0),
        num_processes=run.get("num_processes", 1),
        global_batch_size=run.get("global_batch_size", "?"),
        final_losses=final_losses or "not recorded",
        data_description=(
            f"{data_summary.get('rows_used', 0)} recordings from `{data_summary.get('manifest')}` "
            f"({data_summary.get('rows_in_manifest', 0)} rows in the manifest)."
        ),
        data_table=_data_table(data_summary.get("sources", {})),
        report_description=(
            f"{reports.get('source', 'template')} reports ({reports.get('accepted', 0)} accepted, "
            f"{reports.get('fallback', 0)} LLM rewrites rejected and replaced by the template)."
        ),
        leakage_description=", ".join(f"{rule}: {count} rows removed" for rule, count in leakage.get("removed", {}).items())
        or "no rule removed any row.",
        evaluation_section=_evaluation_section(evaluation),
        objective_description=_objective_description(objective),
    )


def _objective_description(objective: Mapping[str, Any]) -> str:
    """The objective in words (the supervised ceiling's label column, classes and dropped rows)."""
    if objective.get("kind") != "supervised":
        return "alignment with the text teacher"
    dropped = objective.get("dropped_rows") or {}
    return (f"cross-entropy of a linear classifier on the pooled embedding against the manifest column "
            f"`{objective.get('label_column')}`, classes {', '.join(f'`{c}`' for c in objective.get('classes', []))}"
            + (f" (rows with other labels dropped: {', '.join(f'`{v}` {n}' for v, n in dropped.items())})"
               if dropped else ""))


__all__ = ["describe_encoder", "describe_starting_encoder", "hub_id_or_none", "render_model_card"]
