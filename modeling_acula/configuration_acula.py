"""AcuLa model configuration."""

from __future__ import annotations

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig

# Alignment objectives implemented in `losses.py` (kept in sync by a test).
ALIGNMENT_LOSS_KINDS = ("cka", "debiased_cka", "released_covariance_cka", "infonce")
TEACHER_POOLINGS = ("mean", "last", "cls")
PRESERVATION_LOSSES = ("none", "feature_distillation")
AUDIO_PROJECTIONS = ("mlp", "linear", "identity")

# The reference teacher of the released code (MedGemma-4B, hidden size 2560), and the small real
# teacher that installs from PyPI (sentence-transformers all-MiniLM-L6-v2, hidden size 384).
REFERENCE_TEACHER = "google/medgemma-4b-pt"
MINILM_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


def _pair(value: int | list[int] | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"`{name}` must be an int or a pair of ints (time, frequency), got {value!r}.")


@strict(accept_kwargs=True)
class AculaConfig(PreTrainedConfig):
    r"""
    Configuration of an AcuLa audio encoder and of its alignment training.

    The defaults reproduce the OPERA-GT encoder used by the authors (a ViT-Small on a 256 x 64 log-mel
    spectrogram with 4 x 4 patches), a masked-audio-modeling (MAM) decoder of width 256, two projection
    heads of 1024 -> 512, and the MedGemma-4B teacher identity of the released code. Use
    [`AculaConfig.from_preset`] for named presets (`"opera-gt"`, `"cpu-small"`).

    Args:
        spectrogram_size (`list[int]`, *optional*, defaults to `[256, 64]`):
            Input spectrogram size as (time frames, mel bins); must match the feature extractor.
        patch_size (`list[int]`, *optional*, defaults to `[4, 4]`):
            Patch size as (time, frequency); must divide `spectrogram_size`.
        num_channels (`int`, *optional*, defaults to 1):
            Number of input channels of the spectrogram "image".
        hidden_size (`int`, *optional*, defaults to 384):
            Width of the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Depth of the encoder.
        num_attention_heads (`int`, *optional*, defaults to 6):
            Attention heads of the encoder; must divide `hidden_size`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Ratio of the encoder's MLP width to `hidden_size`.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether query, key and value projections have a bias.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the MLPs.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every LayerNorm.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after attention and MLP outputs.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated-normal initialiser.
        use_mam (`bool`, *optional*, defaults to `True`):
            Whether [`AculaForPreTraining`] trains the masked-audio-modeling decoder (native encoder only).
        mask_ratio (`float`, *optional*, defaults to 0.7):
            Fraction of patches masked for masked-audio modeling.
        decoder_hidden_size (`int`, *optional*, defaults to 256):
            Width of the MAM decoder.
        decoder_num_hidden_layers (`int`, *optional*, defaults to 8):
            Depth of the MAM decoder (a plain transformer, the usual MAE variant).
        decoder_num_attention_heads (`int`, *optional*, defaults to 8):
            Attention heads of the MAM decoder.
        decoder_mlp_ratio (`float`, *optional*, defaults to 4.0):
            MLP ratio of the MAM decoder.
        projection_dim (`int`, *optional*, defaults to 512):
            Output size of both projection heads.
        projection_hidden_size (`int`, *optional*, defaults to 1024):
            Hidden size of both projection heads.
        projection_dropout (`float`, *optional*, defaults to 0.2):
            Dropout inside both projection heads.
        audio_projection (`str`, *optional*, defaults to `"mlp"`):
            The audio head: `"mlp"` (Linear -> ReLU -> Dropout -> Linear, as the reference), `"linear"` (one linear
            map) or `"identity"` (none: the alignment loss sees the pooled embedding itself, so that only the encoder
            can align it; needs `projection_dim` equal to the encoder's width). A head with capacity can absorb the
            alignment and leave the encoder where it started.
        teacher_name_or_path (`str`, *optional*, defaults to `"google/medgemma-4b-pt"`):
            Name or path of the frozen text teacher.
        teacher_revision (`str`, *optional*):
            Revision (branch, tag or commit) of the teacher.
        teacher_layer (`int`, *optional*, defaults to -1):
            Index into the teacher's `hidden_states` (negative counts from the end).
        teacher_pooling (`str`, *optional*, defaults to `"mean"`):
            One of `"mean"` (masked mean, padding never counts), `"last"` (last real token) or `"cls"`.
        teacher_hidden_size (`int`, *optional*, defaults to 2560):
            Hidden size of the teacher; checked against the loaded teacher.
        teacher_max_length (`int`, *optional*, defaults to 256):
            Maximum number of report tokens given to the teacher.
        alignment_loss (`str`, *optional*, defaults to `"debiased_cka"`):
            One of `"cka"` (linear CKA), `"debiased_cka"` (CKA on the unbiased HSIC estimator, which does not
            saturate on small batches), `"released_covariance_cka"` (the authors' variant, for reproduction
            only) or `"infonce"` (symmetric InfoNCE with a learnable temperature).
        alignment_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the alignment loss.
        mam_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the masked-audio-modeling loss.
        infonce_init_temperature (`float`, *optional*, defaults to 0.07):
            Initial temperature of the InfoNCE loss.
        audio_backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of a transformers audio backbone (a `WhisperConfig`, of which the encoder is used, an
            `ASTConfig`, a `Wav2Vec2Config`, ...) used instead of the native ViT encoder; [`AculaModel`] wraps it. Masked-audio modeling is native-only: with a foreign backbone
            the self-supervised term is chosen by `preservation_loss`.
        preservation_loss (`str`, *optional*, defaults to `"none"`):
            Self-supervised term for a foreign backbone: `"none"`, or `"feature_distillation"` (mean squared
            error between the pooled embedding and that of a frozen copy of the starting backbone).
        preservation_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the preservation loss.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the linear classifier of [`AculaForAudioClassification`].

    Example:

    ```python
    >>> from modeling_acula import AculaConfig, AculaModel

    >>> config = AculaConfig.from_preset("cpu-small")
    >>> model = AculaModel(config)
    ```"""

    model_type = "acula"
    sub_configs_defaults: ClassVar[dict] = {}

    spectrogram_size: list[int] | tuple[int, int] = (256, 64)
    patch_size: int | list[int] | tuple[int, int] = (4, 4)
    num_channels: int = 1
    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02

    use_mam: bool = True
    mask_ratio: float = 0.7
    decoder_hidden_size: int = 256
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 8
    decoder_mlp_ratio: float | int = 4.0

    projection_dim: int = 512
    projection_hidden_size: int = 1024
    projection_dropout: float | int = 0.2
    audio_projection: str = "mlp"

    teacher_name_or_path: str = REFERENCE_TEACHER
    teacher_revision: str | None = None
    teacher_layer: int = -1
    teacher_pooling: str = "mean"
    teacher_hidden_size: int = 2560
    teacher_max_length: int = 256

    alignment_loss: str = "debiased_cka"
    alignment_loss_weight: float | int = 1.0
    mam_loss_weight: float | int = 1.0
    infonce_init_temperature: float = 0.07

    audio_backbone_config: dict | PreTrainedConfig | None = None
    preservation_loss: str = "none"
    preservation_loss_weight: float | int = 1.0

    classifier_dropout: float | int = 0.0

    def __post_init__(self, **kwargs):
        self.spectrogram_size = list(_pair(self.spectrogram_size, "spectrogram_size"))
        self.patch_size = list(_pair(self.patch_size, "patch_size"))
        if isinstance(self.audio_backbone_config, dict):
            backbone = dict(self.audio_backbone_config)
            model_type = backbone.pop("model_type", None)
            if model_type is None:
                raise ValueError("`audio_backbone_config` needs a `model_type` (for example 'audio-spectrogram-transformer').")
            self.audio_backbone_config = AutoConfig.for_model(model_type, **backbone)
        super().__post_init__(**kwargs)
        self._check_consistency()

    def _check_consistency(self) -> None:
        """Raise a clear error for settings that cannot work together."""
        (time_frames, mel_bins), (patch_t, patch_f) = self.spectrogram_size, self.patch_size
        if self.audio_backbone_config is None and (time_frames % patch_t or mel_bins % patch_f):
            raise ValueError(
                f"patch_size {self.patch_size} must divide spectrogram_size {self.spectrogram_size} "
                "(time frames, mel bins) exactly."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})."
            )
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be a multiple of "
                f"decoder_num_attention_heads ({self.decoder_num_attention_heads})."
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}.")
        if self.alignment_loss not in ALIGNMENT_LOSS_KINDS:
            raise ValueError(f"alignment_loss must be one of {ALIGNMENT_LOSS_KINDS}, got {self.alignment_loss!r}.")
        if self.teacher_pooling not in TEACHER_POOLINGS:
            raise ValueError(f"teacher_pooling must be one of {TEACHER_POOLINGS}, got {self.teacher_pooling!r}.")
        if self.preservation_loss not in PRESERVATION_LOSSES:
            raise ValueError(
                f"preservation_loss must be one of {PRESERVATION_LOSSES}, got {self.preservation_loss!r}."
            )
        if self.audio_projection not in AUDIO_PROJECTIONS:
            raise ValueError(f"audio_projection must be one of {AUDIO_PROJECTIONS}, got {self.audio_projection!r}.")
        if self.audio_projection == "identity" and self.projection_dim != self.audio_embedding_size:
            raise ValueError(f"audio_projection='identity' compares the encoder's {self.audio_embedding_size}-d "
                             f"embedding with the text head's output: set projection_dim={self.audio_embedding_size} "
                             f"(got {self.projection_dim}).")
        if self.teacher_hidden_size <= 0:
            raise ValueError(f"teacher_hidden_size must be positive, got {self.teacher_hidden_size}.")
        if self.audio_backbone_config is not None and self.use_mam:
            raise ValueError(
                "Masked-audio modeling needs the native ViT encoder; set use_mam=False with an "
                "audio_backbone_config (and optionally preservation_loss='feature_distillation')."
            )
        if self.audio_backbone_config is None and self.preservation_loss != "none":
            raise ValueError("preservation_loss applies to a foreign audio_backbone_config only.")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Number of patches along (time, frequency)."""
        return (self.spectrogram_size[0] // self.patch_size[0], self.spectrogram_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def uses_native_encoder(self) -> bool:
        return self.audio_backbone_config is None

    @property
    def audio_embedding_size(self) -> int:
        """Size of the pooled audio embedding that feeds the audio projection head."""
        if self.audio_backbone_config is None:
            return self.hidden_size
        return self.audio_backbone_config.hidden_size

    def check_teacher_hidden_size(self, teacher_hidden_size: int) -> None:
        """Raise if a loaded teacher does not have the hidden size this config's text head expects.

        Args:
            teacher_hidden_size (`int`): hidden size read from the loaded teacher's own config.
        """
        if int(teacher_hidden_size) != self.teacher_hidden_size:
            raise ValueError(
                f"The teacher {self.teacher_name_or_path!r} has hidden size {teacher_hidden_size}, but this config's "
                f"text projection head expects teacher_hidden_size={self.teacher_hidden_size}. Set "
                f"teacher_hidden_size={teacher_hidden_size} (the dimension must come from the teacher's config)."
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "AculaConfig":
        """Build a named preset, with keyword overrides.

        Args:
            name (`str`):
                `"opera-gt"`: the reference OPERA-GT ViT-Small (about 21.5M encoder parameters) with the
                MedGemma-4B teacher identity of the released code. `"cpu-small"`: a small ViT (16 x 16 patches,
                width 192, depth 6) with the PyPI MiniLM teacher, trainable in minutes on two CPU cores.
            **overrides: any `AculaConfig` argument.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available: {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "opera-gt": {},
    "cpu-small": {
        "patch_size": [16, 16],
        "hidden_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 3,
        "decoder_hidden_size": 128,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 4,
        "projection_hidden_size": 512,
        "projection_dim": 256,
        "teacher_name_or_path": MINILM_TEACHER,
        "teacher_hidden_size": 384,
        "teacher_max_length": 128,
    },
}

__all__ = ["AculaConfig", "ALIGNMENT_LOSS_KINDS", "PRESETS"]
