"""PyTorch AcuLa models: the native spectrogram ViT encoder, the alignment (pre-training) model and a classifier."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import ForSequenceClassificationLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import ModelOutput

from .configuration_acula import AculaConfig
from .losses import AlignmentLoss


@dataclass
class AculaForPreTrainingOutput(ModelOutput):
    """
    Output of [`AculaForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the alignment, masked-audio-modeling and preservation losses that were computed.
        alignment_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Alignment loss over the (global) batch; present when `teacher_embeds` were given.
        mam_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean squared error on masked patches; present when masked-audio modeling is on.
        preservation_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Feature-distillation loss of a foreign backbone against its frozen starting copy.
        audio_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            Audio projections.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
            Text projections of the teacher vectors.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Pooled encoder embedding of the unmasked input (what [`AculaModel`] returns).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_dim)`, *optional*):
            Predicted patches of the masked-audio-modeling decoder.
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            1 for masked patches, 0 for visible ones.
    """

    loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    mam_loss: torch.FloatTensor | None = None
    preservation_loss: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None


def build_2d_sincos_position_embedding(grid_size: tuple[int, int], embed_dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions for a (time, frequency) patch grid, with a leading zero row for CLS.

    Half of the channels encode the time index and half the frequency index, as in MAE.

    Args:
        grid_size (`tuple[int, int]`): number of patches along time and frequency.
        embed_dim (`int`): embedding width, a multiple of 4.

    Returns:
        `torch.Tensor` of shape `(1, 1 + grid_t * grid_f, embed_dim)`, in torch's default dtype (the dtype a model
        is being built in, e.g. bfloat16 under `from_pretrained(..., dtype=torch.bfloat16)`).
    """
    if embed_dim % 4:
        raise ValueError(f"Sine-cosine positions need a width divisible by 4, got {embed_dim}.")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    grid_t, grid_f = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64), torch.arange(grid_size[1], dtype=torch.float64), indexing="ij"
    )
    angle_t = grid_t.flatten()[:, None] * omega[None]
    angle_f = grid_f.flatten()[:, None] * omega[None]
    table = torch.cat([angle_t.sin(), angle_t.cos(), angle_f.sin(), angle_f.cos()], dim=1)
    table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table.to(torch.get_default_dtype()).unsqueeze(0)


class AculaPatchEmbeddings(nn.Module):
    """Cuts the (batch, channels, time, mel) spectrogram into non-overlapping patches and projects them."""

    def __init__(self, config: AculaConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        # The feature extractor returns float32; a model loaded in half precision takes it as it is.
        input_values = input_values.to(dtype=self.projection.weight.dtype)
        return self.projection(input_values).flatten(2).transpose(1, 2)


class AculaEmbeddings(nn.Module):
    """Patch embeddings plus fixed sine-cosine positions and a learned CLS token."""

    def __init__(self, config: AculaConfig):
        super().__init__()
        self.patch_embeddings = AculaPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # A frozen parameter (not a buffer) so that converted checkpoints can carry their own table. Loading replaces
        # it with a trainable parameter; `AculaPreTrainedModel.from_pretrained` freezes it again.
        self.position_embeddings = nn.Parameter(
            build_2d_sincos_position_embedding(config.grid_size, config.hidden_size), requires_grad=False
        )

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """Returns the patch tokens with positions added (without CLS); `prepend_cls` adds it."""
        return self.patch_embeddings(input_values) + self.position_embeddings[:, 1:, :]

    def prepend_cls(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.position_embeddings[:, :1, :]).expand(patch_tokens.shape[0], -1, -1)
        return torch.cat([cls, patch_tokens], dim=1)


class AculaAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (fused kernels on CPU and GPU)."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden_states.shape

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split_heads(self.q_proj(hidden_states)),
            split_heads(self.k_proj(hidden_states)),
            split_heads(self.v_proj(hidden_states)),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.o_proj(context.transpose(1, 2).reshape(batch, length, -1))


class AculaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class AculaLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block (timm's ViT `Block`), shared by the encoder and the MAM decoder."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        config: AculaConfig,
    ):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = AculaAttention(
            hidden_size, num_heads, qkv_bias=config.qkv_bias, dropout=config.attention_probs_dropout_prob
        )
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = AculaMLP(hidden_size, int(hidden_size * mlp_ratio), config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.dropout(self.attention(self.layernorm_before(hidden_states)))
        return hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))


class AculaEncoder(nn.Module):
    def __init__(self, config: AculaConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            [
                AculaLayer(config.hidden_size, config.num_attention_heads, config.mlp_ratio, config)
                for _ in range(config.num_hidden_layers)
            ]
        )

    def forward(
        self, hidden_states: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
        return hidden_states, all_hidden_states


# Where the copied model code defines each Auto class (the module names of this package's files).
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_acula.AculaConfig",
    "AutoModel": "modeling_acula.AculaModel",
    "AutoModelForPreTraining": "modeling_acula.AculaForPreTraining",
    "AutoModelForAudioClassification": "modeling_acula.AculaForAudioClassification",
}


class AculaPreTrainedModel(PreTrainedModel):
    config_class = AculaConfig
    config: AculaConfig
    base_model_prefix = "acula"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["AculaEmbeddings", "AculaLayer"]
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """[`~transformers.PreTrainedModel.from_pretrained`], then the fixed sine-cosine position tables are frozen
        again (transformers' loading turns `requires_grad` back on for every parameter it sets)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._freeze_position_tables()
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """[`~transformers.PreTrainedModel.save_pretrained`], with every acula Auto class in the config's `auto_map`:
        transformers records only the class being saved, and one checkpoint serves all three heads (an encoder
        folder is loaded with `AutoModelForAudioClassification` to fine-tune it, also with `trust_remote_code`)."""
        self.config.auto_map = {**REMOTE_CODE_AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _freeze_position_tables(self) -> None:
        """Keep the sine-cosine tables of the encoder and the masked-audio decoder out of training."""
        for name, module in self.named_modules():
            if isinstance(module, (AculaEmbeddings, AculaMAMDecoder)):
                module.position_embeddings.requires_grad_(False)
            elif name.endswith("embed_positions") and isinstance(module, nn.Embedding):  # Whisper's fixed sinusoids
                module.requires_grad_(False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, AculaEmbeddings):
            nn.init.trunc_normal_(module.cls_token, std=std)
            module.position_embeddings.copy_(
                build_2d_sincos_position_embedding(self.config.grid_size, self.config.hidden_size)
            )
        elif isinstance(module, AculaMAMDecoder):
            nn.init.trunc_normal_(module.mask_token, std=std)
            module.position_embeddings.copy_(
                build_2d_sincos_position_embedding(self.config.grid_size, self.config.decoder_hidden_size)
            )

    def _check_input_values(self, input_values: torch.Tensor) -> torch.Tensor:
        """Accept (batch, time, mel) or (batch, channels, time, mel) and check the size against the config."""
        if input_values.dim() == 3:
            input_values = input_values.unsqueeze(1)
        expected = (self.config.num_channels, *self.config.spectrogram_size)
        if input_values.dim() != 4 or tuple(input_values.shape[1:]) != expected:
            raise ValueError(
                f"input_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) as produced by "
                f"AculaFeatureExtractor, got {tuple(input_values.shape)}."
            )
        return input_values


class AculaModel(AculaPreTrainedModel):
    """
    The AcuLa audio encoder; `pooler_output` is one embedding per clip.

    - Native (no `audio_backbone_config`): a ViT over log-mel spectrogram patches; the embedding is the reference
      one, the mean of the patch tokens (CLS excluded) followed by the final LayerNorm.
    - Foreign backbone (`audio_backbone_config`): the transformers audio encoder it describes, kept as
      `self.backbone`. A Whisper backbone is its encoder alone (`WhisperEncoder`, with the position table of
      `max_source_positions`, which may be truncated for short windows); it takes `AculaFeatureExtractor.for_whisper`
      spectrograms and its embedding is the mean of the frames that hold audio (Whisper pads every clip to its
      window, and the padded frames would otherwise dominate the mean of a short recording). Other backbones (AST,
      wav2vec2, ...) take their own feature extractor's inputs; their embedding is their `pooler_output`, or the mean
      over the frames that `attention_mask` marks as real.

    A Whisper backbone can also run in two parts: [`forward_prefix`] (the stem and the first layers) and
    [`forward_from_layer`] (the layers above, the final norm and the pooling). With adapters on the top layers only,
    the prefix is a fixed function of the window, which the training app computes once (its prefix cache).

    Args:
        config ([`AculaConfig`]): model configuration; weights are not loaded by the constructor.
    """

    def __init__(self, config: AculaConfig):
        super().__init__(config)
        if config.uses_native_encoder:
            self.embeddings = AculaEmbeddings(config)
            self.encoder = AculaEncoder(config)
            self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        else:
            self.backbone = build_backbone(config.audio_backbone_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        if not self.config.uses_native_encoder:
            return self.backbone.get_input_embeddings()
        return self.embeddings.patch_embeddings

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, time_frames, mel_bins)`):
                Log-mel spectrograms from [`AculaFeatureExtractor`] (native and Whisper backbones), or what a foreign
                backbone's own feature extractor returns.
            attention_mask (`torch.LongTensor`, *optional*):
                For foreign backbones that take one (wav2vec2-family): 1 for real input; padded frames are left out
                of the mean. Whisper backbones find the frames that hold audio from the spectrogram itself.
            output_hidden_states (`bool`, *optional*):
                Whether to return the hidden states of every layer.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.BaseModelOutputWithPooling`].

        Returns:
            `last_hidden_state`: for the native encoder (batch, 1 + num_patches, hidden_size), the output of the last
            block (CLS first) before the final LayerNorm, which the reference applies after pooling; for a foreign
            backbone, its own. `pooler_output` (batch, hidden_size): the embedding.
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not self.config.uses_native_encoder:
            sequence_output, pooled_output, hidden_states = self._forward_backbone(
                input_values, attention_mask, output_hidden_states
            )
        else:
            input_values = self._check_input_values(input_values)
            tokens = self.embeddings.prepend_cls(self.embeddings(input_values))
            sequence_output, hidden_states = self.encoder(tokens, output_hidden_states=output_hidden_states)
            pooled_output = self.layernorm(sequence_output[:, 1:, :].mean(dim=1))

        if not return_dict:
            return tuple(v for v in (sequence_output, pooled_output, hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=hidden_states
        )

    def _forward_backbone(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None, output_hidden_states: bool
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        extra = {"output_hidden_states": True} if output_hidden_states else {}
        if is_whisper_config(self.config.audio_backbone_config):
            features = whisper_input_features(input_values, self.config.audio_backbone_config)
            outputs = self.backbone(features, **extra)
            frame_mask = whisper_audio_frame_mask(features, outputs.last_hidden_state.shape[1])
            pooled = pool_audio_encoder_output(outputs, frame_mask)
        else:
            encoder_kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
            outputs = self.backbone(input_values, **encoder_kwargs, **extra)
            pooled = pool_audio_encoder_output(outputs, attention_mask, self.backbone)
        return outputs.last_hidden_state, pooled, getattr(outputs, "hidden_states", None)

    # --- a Whisper encoder in two parts: a (frozen) prefix, computed once, and the layers above it ---------------

    def _whisper_backbone(self, method: str):
        backbone_config = self.config.audio_backbone_config
        if not is_whisper_config(backbone_config):
            kind = "the native ViT encoder" if backbone_config is None else f"a {backbone_config.model_type} backbone"
            raise ValueError(f"AculaModel.{method} splits a Whisper backbone only; this model has {kind}.")
        return self.backbone

    def _check_prefix_layers(self, num_layers: int, method: str) -> None:
        depth = len(self.backbone.layers)
        if not isinstance(num_layers, int) or not 0 <= num_layers <= depth:
            raise ValueError(f"AculaModel.{method}: the layer index must be an int in 0..{depth} for this Whisper "
                             f"encoder of {depth} layers, got {num_layers!r}.")

    def forward_prefix(self, input_values: torch.Tensor, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the bottom of a Whisper backbone: the convolution stem, the positions and the first `num_layers`
        layers, exactly as [`forward`] runs them (dropout and layer drop included in training mode).

        With adapters on the top layers only (LoRA on the last `k` layers), the output of the first `depth - k`
        layers is a fixed function of the spectrogram: it can be computed once per window, stored, and continued
        with [`forward_from_layer`] at every training step.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, frames, mel_bins)`):
                Spectrograms from `AculaFeatureExtractor.for_whisper`.
            num_layers (`int`): how many encoder layers to run (0: the stem and positions only).

        Returns:
            `(hidden_states, audio_frame_mask)`: `(batch_size, num_frames, d_model)` and the `(batch_size,
            num_frames)` long mask of the frames that hold audio (what the pooling averages, see
            [`whisper_audio_frame_mask`]).

        Raises:
            `ValueError`: for a native or non-Whisper encoder, or a layer index outside `0..encoder_layers`.
        """
        backbone = self._whisper_backbone("forward_prefix")
        self._check_prefix_layers(num_layers, "forward_prefix")
        features = whisper_input_features(input_values, self.config.audio_backbone_config)
        # WhisperEncoder.forward, step by step up to layer `num_layers`.
        hidden = F.gelu(backbone.conv1(features))
        hidden = F.gelu(backbone.conv2(hidden)).permute(0, 2, 1)
        positions = torch.arange(backbone.embed_positions.num_embeddings, device=hidden.device)
        hidden = hidden + backbone.embed_positions(positions)
        hidden = F.dropout(hidden, p=backbone.dropout, training=backbone.training)
        hidden = self._run_whisper_layers(hidden, 0, num_layers)
        return hidden, whisper_audio_frame_mask(features, hidden.shape[1])

    def forward_from_layer(
        self,
        hidden_states: torch.Tensor,
        start_layer: int,
        audio_frame_mask: torch.Tensor,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Continue a Whisper backbone from the output of its first `start_layer` layers (what [`forward_prefix`]
        returns): the remaining layers, the final layer norm and the pooling over the frames that hold audio. With
        `hidden, mask = forward_prefix(x, n)`, `forward_from_layer(hidden, n, mask)` equals `forward(x)`.

        Args:
            hidden_states (`torch.FloatTensor` of shape `(batch_size, num_frames, d_model)`):
                The output of layer `start_layer - 1` (of the stem for 0); cast to the weights' dtype.
            start_layer (`int`): the first layer to run.
            audio_frame_mask (`torch.Tensor` of shape `(batch_size, num_frames)`): 1 for frames that hold audio.
            return_dict (`bool`, *optional*): whether to return a `BaseModelOutputWithPooling`.

        Raises:
            `ValueError`: for a native or non-Whisper encoder, a layer index outside `0..encoder_layers`, or hidden
                states / mask of another shape than the encoder's frames and width.
        """
        backbone = self._whisper_backbone("forward_from_layer")
        self._check_prefix_layers(start_layer, "forward_from_layer")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        expected = (backbone.embed_positions.num_embeddings, backbone.config.d_model)
        if hidden_states.dim() != 3 or tuple(hidden_states.shape[1:]) != expected:
            raise ValueError(f"AculaModel.forward_from_layer: hidden_states must have shape (batch, {expected[0]}, "
                             f"{expected[1]}) for this Whisper encoder, got {tuple(hidden_states.shape)}.")
        if tuple(audio_frame_mask.shape) != tuple(hidden_states.shape[:2]):
            raise ValueError(f"AculaModel.forward_from_layer: audio_frame_mask must have shape "
                             f"{tuple(hidden_states.shape[:2])}, got {tuple(audio_frame_mask.shape)}.")
        hidden = self._run_whisper_layers(hidden_states.to(backbone.conv1.weight.dtype), start_layer,
                                          len(backbone.layers))
        sequence_output = backbone.layer_norm(hidden)
        pooled = pool_audio_encoder_output(BaseModelOutputWithPooling(last_hidden_state=sequence_output),
                                           audio_frame_mask)
        if not return_dict:
            return sequence_output, pooled
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled)

    def _run_whisper_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        backbone = self.backbone
        for layer in backbone.layers[start:stop]:
            # Layer drop as in WhisperEncoder.forward (one draw per layer, training mode only).
            if backbone.training and backbone.layerdrop > 0.0 and torch.rand([]) < backbone.layerdrop:
                continue
            hidden = layer(hidden, None)
        return hidden

    def forward_masked(
        self, input_values: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a random subset of patches (MAE-style) for masked-audio modeling.

        Args:
            input_values (`torch.FloatTensor`): spectrograms as in `forward`.
            mask_ratio (`float`): fraction of patches hidden from the encoder; `int(num_patches * (1 - mask_ratio))`
                patches (at least one) stay visible, as in the released code.
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                Ranks patches for masking (lowest kept); random when not given.

        Returns:
            `(latent, mask, ids_restore)`: normalised visible tokens with CLS first, the binary mask (1 = masked)
            in the original patch order, and the permutation that restores that order.
        """
        input_values = self._check_input_values(input_values)
        patches = self.embeddings(input_values)
        batch, num_patches, width = patches.shape
        # Truncated as in the released masking (`int(L * (1 - ratio))`, float rounding included: 0.8 of 1,024
        # patches keeps 204, not 205); at least one patch stays visible.
        num_keep = max(1, int(num_patches * (1 - mask_ratio)))
        if noise is None:
            noise = torch.rand(batch, num_patches, device=patches.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :num_keep]
        visible = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, width))
        mask = torch.ones(batch, num_patches, device=patches.device)
        mask[:, :num_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)

        latent, _ = self.encoder(self.embeddings.prepend_cls(visible))
        return self.layernorm(latent), mask, ids_restore


class AculaMAMDecoder(nn.Module):
    """Plain-transformer MAE decoder that predicts the masked spectrogram patches."""

    def __init__(self, config: AculaConfig):
        super().__init__()
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.position_embeddings = nn.Parameter(
            build_2d_sincos_position_embedding(config.grid_size, config.decoder_hidden_size), requires_grad=False
        )
        self.layers = nn.ModuleList(
            [
                AculaLayer(config.decoder_hidden_size, config.decoder_num_attention_heads, config.decoder_mlp_ratio, config)
                for _ in range(config.decoder_num_hidden_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        patch_dim = config.patch_size[0] * config.patch_size[1] * config.num_channels
        self.decoder_pred = nn.Linear(config.decoder_hidden_size, patch_dim)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        tokens = self.decoder_embed(latent)
        batch, num_patches = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, num_patches + 1 - tokens.shape[1], -1)
        patches = torch.cat([tokens[:, 1:, :], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, tokens.shape[2]))
        hidden = torch.cat([tokens[:, :1, :], patches], dim=1) + self.position_embeddings
        for layer in self.layers:
            hidden = layer(hidden)
        return self.decoder_pred(self.decoder_norm(hidden))[:, 1:, :]


class AculaProjectionHead(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear, as in the reference."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


def build_audio_projection(config: AculaConfig) -> nn.Module:
    """The audio head `config.audio_projection` names: the reference MLP, one linear map, or none (identity)."""
    if config.audio_projection == "linear":
        return nn.Linear(config.audio_embedding_size, config.projection_dim)
    if config.audio_projection == "identity":
        return nn.Identity()
    return AculaProjectionHead(config.audio_embedding_size, config.projection_hidden_size, config.projection_dim,
                               config.projection_dropout)


def patchify(input_values: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """(batch, channels, time, mel) -> (batch, num_patches, patch_t * patch_f * channels), in the patch order of
    `AculaPatchEmbeddings` (time-major)."""
    batch, channels, time, mel = input_values.shape
    patch_t, patch_f = patch_size
    x = input_values.reshape(batch, channels, time // patch_t, patch_t, mel // patch_f, patch_f)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, (time // patch_t) * (mel // patch_f), -1)


def build_audio_encoder(config: AculaConfig) -> AculaModel:
    """The encoder of an acula model: an [`AculaModel`] (native ViT, or a wrapped foreign backbone)."""
    return AculaModel(config)


def is_whisper_config(backbone_config) -> bool:
    return getattr(backbone_config, "model_type", None) == "whisper"


def build_backbone(backbone_config) -> PreTrainedModel:
    """The transformers model behind a foreign `audio_backbone_config`: the encoder alone for Whisper (the decoder
    plays no part in an audio embedding), `AutoModel` otherwise."""
    if is_whisper_config(backbone_config):
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(backbone_config)
    return AutoModel.from_config(backbone_config)


def whisper_input_features(input_values: torch.Tensor, backbone_config) -> torch.Tensor:
    """acula's `(batch, 1, frames, mel)` spectrograms -> Whisper's `(batch, mel, frames)` `input_features`, with a
    clear error when the window does not match the encoder's position table."""
    if input_values.dim() == 4 and input_values.shape[1] == 1:
        input_values = input_values[:, 0]
    expected = (backbone_config.num_mel_bins, 2 * backbone_config.max_source_positions)
    if input_values.dim() != 3 or tuple(input_values.shape[1:]) not in (expected[::-1], expected):
        raise ValueError(
            f"This Whisper encoder takes spectrograms of {expected[1]} frames x {expected[0]} mel bins "
            f"(AculaFeatureExtractor.for_whisper({expected[1] / 100:g})), got input of shape {tuple(input_values.shape)}."
        )
    if tuple(input_values.shape[1:]) == expected[::-1]:  # (batch, frames, mel): acula's layout
        input_values = input_values.transpose(1, 2)
    return input_values


def whisper_audio_frame_mask(input_features: torch.Tensor, num_frames: int) -> torch.Tensor:
    """1 for the encoder frames that hold audio, 0 for those that only see the padding of the window.

    Zero padding (and digital silence) is at the spectrogram's floor in every mel bin, the clip's minimum; a frame
    holds audio if any of its bins is above it. Whisper's stride-2 convolution maps input frames 2j and 2j + 1 to
    encoder frame j. A clip without any audio keeps all its frames (its mean is still defined).

    Args:
        input_features (`torch.Tensor` of shape `(batch_size, mel_bins, input_frames)`): Whisper log-mels.
        num_frames (`int`): encoder frames, `input_frames // 2`.
    """
    floor = input_features.amin(dim=(1, 2), keepdim=True)
    has_audio = (input_features > floor).any(dim=1)  # (batch, input_frames)
    has_audio = has_audio[:, : 2 * num_frames].reshape(has_audio.shape[0], num_frames, 2).any(dim=-1)
    silent_clip = ~has_audio.any(dim=1, keepdim=True)
    return (has_audio | silent_clip).to(torch.long)


def truncate_whisper_positions(backbone: PreTrainedModel, max_source_positions: int) -> None:
    """Keep the first `max_source_positions` rows of a Whisper encoder's position table (and say so in its config),
    so that it takes windows of `max_source_positions / 50` seconds instead of 30 s, as Whisper fine-tuning recipes
    for short audio do. Attention cost falls with the square of the window."""
    table = backbone.embed_positions
    if not 0 < max_source_positions <= table.num_embeddings:
        raise ValueError(f"max_source_positions must be in 1..{table.num_embeddings}, got {max_source_positions}.")
    truncated = nn.Embedding(max_source_positions, table.embedding_dim, dtype=table.weight.dtype,
                             device=table.weight.device)
    with torch.no_grad():
        truncated.weight.copy_(table.weight[:max_source_positions])
    truncated.requires_grad_(False)
    backbone.embed_positions = truncated
    backbone.max_source_positions = max_source_positions
    backbone.config.max_source_positions = max_source_positions


def pool_audio_encoder_output(
    outputs, attention_mask: torch.Tensor | None = None, encoder: nn.Module | None = None
) -> torch.Tensor:
    """One vector per recording: the encoder's `pooler_output` when it has one (AculaModel, AST), else the mean of
    `last_hidden_state` over time (wav2vec2-family), ignoring padded frames.

    Args:
        outputs: the encoder's output (with `pooler_output` and/or `last_hidden_state`).
        attention_mask (`torch.Tensor` of shape `(batch_size, length)`, *optional*):
            1 for real input, 0 for padding: either per frame of `last_hidden_state`, or per input sample as the
            wav2vec2-family feature extractors return it, which is turned into a frame mask with the encoder's
            `_get_feature_vector_attention_mask`.
        encoder (`nn.Module`, *optional*): the encoder that produced `outputs`; needed for a sample-level mask.
    """
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is not None:
        return pooled
    hidden = outputs.last_hidden_state
    if attention_mask is None:
        return hidden.mean(dim=1)
    if attention_mask.shape[1] != hidden.shape[1]:
        to_frames = getattr(encoder, "_get_feature_vector_attention_mask", None)
        if to_frames is None:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} positions but the encoder returned {hidden.shape[1]} "
                f"frames, and {type(encoder).__name__} cannot map a sample-level mask to frames."
            )
        attention_mask = to_frames(hidden.shape[1], attention_mask)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def mean_per_recording(values: torch.Tensor, recording_index: torch.Tensor) -> torch.Tensor:
    """Averages the rows of `values` that belong to the same recording.

    Args:
        values (`torch.Tensor` of shape `(num_windows, ...)`): one row per window.
        recording_index (`torch.LongTensor` of shape `(num_windows,)`): the recording of each window, numbered from 0
            in input order, as [`AculaFeatureExtractor`] returns it in sliding-window mode.

    Returns:
        `torch.Tensor` of shape `(num_recordings, ...)`, `num_recordings = recording_index.max() + 1`.
    """
    if recording_index.dim() != 1 or recording_index.shape[0] != values.shape[0]:
        raise ValueError(
            f"recording_index must have shape ({values.shape[0]},), one entry per window, got "
            f"{tuple(recording_index.shape)}."
        )
    recording_index = recording_index.to(device=values.device, dtype=torch.long)
    counts = torch.bincount(recording_index)
    if (counts == 0).any():
        raise ValueError("recording_index must number the recordings 0, 1, ... without gaps.")
    sums = values.new_zeros((counts.shape[0], *values.shape[1:])).index_add_(0, recording_index, values)
    return sums / counts.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))


class AculaForPreTraining(AculaPreTrainedModel):
    """
    AcuLa alignment model: the audio encoder, the masked-audio-modeling decoder (native encoder) and the two
    projection heads. Given spectrograms and the frozen teacher's report vectors, it returns the alignment loss
    over the batch (gathered across processes under data parallelism) plus the self-supervised term.

    Args:
        config ([`AculaConfig`]): model configuration.
    """

    def __init__(self, config: AculaConfig):
        super().__init__(config)
        self.acula = build_audio_encoder(config)
        self.mam_decoder = AculaMAMDecoder(config) if config.use_mam else None
        self.audio_projection = build_audio_projection(config)
        self.text_projection = AculaProjectionHead(
            config.teacher_hidden_size, config.projection_hidden_size, config.projection_dim, config.projection_dropout
        )
        self.alignment_head = AlignmentLoss(
            kind=config.alignment_loss, init_temperature=config.infonce_init_temperature
        )
        # Frozen starting copy for `preservation_loss="feature_distillation"`; kept out of the module tree so it
        # is neither saved nor trained, and taken lazily at the first forward (after weights are loaded).
        self._reference_encoder: list[nn.Module] = []
        self.post_init()

    @classmethod
    def from_audio_backbone(
        cls, backbone_name_or_path: str, window_seconds: float | None = None, **config_kwargs
    ) -> "AculaForPreTraining":
        """Wrap a pretrained transformers audio backbone (a Whisper, `ASTModel`, `Wav2Vec2Model`, HuBERT, ...
        checkpoint) with fresh projection heads for alignment. Masked-audio modeling is native-only, so the
        self-supervised term is `preservation_loss` (default `"feature_distillation"` against the frozen starting
        backbone).

        Args:
            backbone_name_or_path (`str`): Hub id or folder of the backbone (a task head in it is dropped; of a
                Whisper model only the encoder is kept).
            window_seconds (`float`, *optional*): Whisper only: the input window. Whisper encoders take 30 s; a
                shorter window keeps the first `50 * window_seconds` rows of the position table (one row per 20 ms)
                and costs less. Use `AculaFeatureExtractor.for_whisper` with the same window. Defaults to the
                backbone's own.
            **config_kwargs: other [`AculaConfig`] arguments (teacher identity, loss, heads, ...).
        """
        backbone_config = AutoConfig.from_pretrained(backbone_name_or_path)
        if is_whisper_config(backbone_config):
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            # The encoder's weights of a full WhisperModel / WhisperForConditionalGeneration folder.
            full = AutoModel.from_pretrained(backbone_name_or_path)
            backbone = full.get_encoder() if hasattr(full, "get_encoder") else full
            if not isinstance(backbone, WhisperEncoder):
                raise ValueError(f"{backbone_name_or_path}: no Whisper encoder found in {type(full).__name__}.")
            if window_seconds is not None:
                positions = window_seconds * 50
                if positions != int(positions):
                    raise ValueError(f"A Whisper window must be a multiple of 0.02 s, got {window_seconds}.")
                truncate_whisper_positions(backbone, int(positions))
        else:
            if window_seconds is not None:
                raise ValueError("window_seconds applies to Whisper backbones only.")
            backbone = AutoModel.from_pretrained(backbone_name_or_path)
        config_kwargs.setdefault("preservation_loss", "feature_distillation")
        backbone_dict = backbone.config.to_dict()
        config = AculaConfig(audio_backbone_config=backbone_dict, use_mam=False, **config_kwargs)
        model = cls(config)
        model.acula.backbone.load_state_dict(backbone.state_dict())
        model.acula._freeze_position_tables()
        return model

    def snapshot_reference_encoder(self) -> None:
        """Take the frozen starting copy of the encoder that `preservation_loss="feature_distillation"` compares
        with, now (it is otherwise taken at the first training forward). Call it before adapters are added or a
        checkpoint is loaded, so that the reference is the start and not a resumed state. A second call keeps the
        first copy."""
        if not self._reference_encoder:
            self._reference_encoder.append(copy.deepcopy(self.acula).eval().requires_grad_(False))

    def _preservation_loss(self, pooled: torch.Tensor, input_values: torch.Tensor | None, *,
                           prefix: tuple[torch.Tensor, int, torch.Tensor] | None = None,
                           **encoder_kwargs) -> torch.Tensor:
        self.snapshot_reference_encoder()
        reference = self._reference_encoder[0].to(pooled.device)
        with torch.no_grad():
            if prefix is not None:  # the prefix is frozen: the reference continues from the same hidden states
                hidden_states, start_layer, frame_mask = prefix
                target = reference.forward_from_layer(hidden_states, start_layer, frame_mask,
                                                      return_dict=True).pooler_output
            else:
                target = pool_audio_encoder_output(
                    reference(input_values, **encoder_kwargs), encoder_kwargs.get("attention_mask"), reference
                )
        return F.mse_loss(pooled, target)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        teacher_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        return_loss: bool = True,
        compute_alignment_loss: bool = True,
        return_dict: bool | None = None,
        prefix_hidden_states: torch.Tensor | None = None,
        prefix_layers: int | None = None,
        audio_frame_mask: torch.Tensor | None = None,
        preservation_target: torch.Tensor | None = None,
        **kwargs,
    ) -> AculaForPreTrainingOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor`):
                Spectrograms `(batch_size, 1, time_frames, mel_bins)` for the native encoder, or whatever the foreign
                backbone's own feature extractor produces.
            teacher_embeds (`torch.FloatTensor` of shape `(batch_size, teacher_hidden_size)`, *optional*):
                Frozen teacher vectors of the reports of the same recordings. Without them no alignment loss is computed.
            attention_mask (`torch.LongTensor`, *optional*):
                Passed to a foreign backbone that takes one (wav2vec2-family); padded frames are left out of the
                mean over time.
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                Controls which patches are masked for masked-audio modeling (for reproducible tests).
            return_loss (`bool`, *optional*, defaults to `True`):
                Whether to compute the losses; `False` returns the embeddings only (no masked-audio-modeling or
                distillation pass, no collective across processes).
            compute_alignment_loss (`bool`, *optional*, defaults to `True`):
                `False` leaves the alignment loss to the caller, which computes it over more embeddings than this
                call sees (gradient caching over an accumulated batch, see `acula_train.gradient_cache`); the
                other terms are still computed and `text_embeds` is still returned.
            return_dict (`bool`, *optional*):
                Whether to return an [`AculaForPreTrainingOutput`].
            prefix_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_frames, d_model)`, *optional*):
                Whisper backbones: instead of `input_values`, the output of the encoder's first `prefix_layers`
                layers ([`AculaModel.forward_prefix`], e.g. read from a cache); only the layers above run. The
                prefix must be frozen (adapters on the layers above only), which makes it a fixed function of the
                spectrogram.
            prefix_layers (`int`, *optional*): the number of layers behind `prefix_hidden_states`.
            audio_frame_mask (`torch.Tensor` of shape `(batch_size, num_frames)`, *optional*):
                With `prefix_hidden_states`: the frames that hold audio (the second output of `forward_prefix`).
            preservation_target (`torch.FloatTensor` of shape `(batch_size, hidden_size)`, *optional*):
                The frozen starting encoder's `pooler_output` for these inputs (a fixed function of the input, e.g.
                cached): the feature-distillation target, instead of a forward pass of the reference copy.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        encoder_kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
        prefix = None
        if prefix_hidden_states is not None:
            if input_values is not None or prefix_layers is None or audio_frame_mask is None:
                raise ValueError("Pass either input_values, or prefix_hidden_states with prefix_layers and "
                                 "audio_frame_mask (AculaModel.forward_prefix's outputs), not both.")
            if self.mam_decoder is not None:
                raise ValueError("prefix_hidden_states: masked-audio modeling needs the spectrogram (input_values).")
            prefix = (prefix_hidden_states, prefix_layers, audio_frame_mask)
            pooled = self.acula.forward_from_layer(*prefix, return_dict=True).pooler_output
        elif input_values is None:
            raise ValueError("AculaForPreTraining needs input_values (or prefix_hidden_states).")
        else:
            pooled = pool_audio_encoder_output(self.acula(input_values, **encoder_kwargs), attention_mask, self.acula)
        audio_embeds = self.audio_projection(pooled)

        losses: dict[str, torch.Tensor] = {}
        text_embeds = None
        if teacher_embeds is not None:
            if teacher_embeds.shape != (pooled.shape[0], config.teacher_hidden_size):
                raise ValueError(
                    f"teacher_embeds must have shape (batch_size={pooled.shape[0]}, teacher_hidden_size="
                    f"{config.teacher_hidden_size}), got {tuple(teacher_embeds.shape)}."
                )
            text_embeds = self.text_projection(teacher_embeds.to(audio_embeds.dtype))
            if return_loss and compute_alignment_loss:
                losses["alignment_loss"] = self.alignment_head(audio_embeds, text_embeds)

        reconstruction = mask = None
        if self.mam_decoder is not None and return_loss:
            latent, mask, ids_restore = self.acula.forward_masked(input_values, config.mask_ratio, noise=noise)
            reconstruction = self.mam_decoder(latent, ids_restore)
            target = patchify(self.acula._check_input_values(input_values), config.patch_size)
            per_patch = (reconstruction - target).pow(2).mean(dim=-1)
            losses["mam_loss"] = (per_patch * mask).sum() / mask.sum()

        if config.preservation_loss == "feature_distillation" and self.training and return_loss:
            if preservation_target is not None:
                if preservation_target.shape != pooled.shape:
                    raise ValueError(f"preservation_target must have shape {tuple(pooled.shape)} (the pooled "
                                     f"embedding), got {tuple(preservation_target.shape)}.")
                losses["preservation_loss"] = F.mse_loss(pooled, preservation_target.to(pooled.dtype))
            else:
                losses["preservation_loss"] = self._preservation_loss(pooled, input_values, prefix=prefix,
                                                                      **encoder_kwargs)

        weights = {
            "alignment_loss": config.alignment_loss_weight,
            "mam_loss": config.mam_loss_weight,
            "preservation_loss": config.preservation_loss_weight,
        }
        loss = sum(weights[name] * value for name, value in losses.items()) if losses else None

        output = AculaForPreTrainingOutput(
            loss=loss,
            alignment_loss=losses.get("alignment_loss"),
            mam_loss=losses.get("mam_loss"),
            preservation_loss=losses.get("preservation_loss"),
            audio_embeds=audio_embeds,
            text_embeds=text_embeds,
            pooler_output=pooled,
            reconstruction=reconstruction,
            mask=mask,
        )
        return output if return_dict else output.to_tuple()


class AculaForAudioClassification(AculaPreTrainedModel):
    """
    AcuLa encoder with a linear classifier (or regressor) on the pooled embedding. Works with `Trainer`,
    `pipeline("audio-classification")` and peft.

    Args:
        config ([`AculaConfig`]): model configuration; `num_labels`, `id2label` and `problem_type` as usual.
    """

    def __init__(self, config: AculaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.acula = build_audio_encoder(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.audio_embedding_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        recording_index: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor`):
                Spectrograms from [`AculaFeatureExtractor`] (or the foreign backbone's inputs).
            labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor`, *optional*):
                Class indices for single-label classification, floats for regression or multi-label; one per
                recording when `recording_index` is given.
            attention_mask (`torch.LongTensor`, *optional*):
                Passed to a foreign backbone that takes one; padded frames are left out of the mean over time.
            recording_index (`torch.LongTensor` of shape `(num_windows,)`, *optional*):
                The recording each row of `input_values` belongs to, as [`AculaFeatureExtractor`] returns it in
                sliding-window mode. The logits of the windows of one recording are averaged, so `logits` has one
                row per recording (this is what `pipeline("audio-classification")` scores when the feature extractor
                has `window_seconds`). Without it every row of `input_values` is its own example.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.SequenceClassifierOutput`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoder_kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
        pooled = pool_audio_encoder_output(self.acula(input_values, **encoder_kwargs), attention_mask, self.acula)
        logits = self.classifier(self.dropout(pooled))
        if recording_index is not None:
            if recording_index.shape[0] != logits.shape[0]:
                # What transformers' audio-classification pipeline passes with batch_size > 1 and sliding windows:
                # it batches one row per recording but concatenates every window's index.
                raise ValueError(
                    f"recording_index has {recording_index.shape[0]} entries for {logits.shape[0]} windows. "
                    "pipeline('audio-classification') cannot batch recordings cut into several windows: call it "
                    "without batch_size (each recording's windows are then averaged)."
                )
            logits = mean_per_recording(logits, recording_index)
        loss = ForSequenceClassificationLoss(labels, logits, self.config) if labels is not None else None
        output = SequenceClassifierOutput(loss=loss, logits=logits)
        return output if return_dict else output.to_tuple()


__all__ = [
    "AculaForAudioClassification",
    "AculaForPreTraining",
    "AculaForPreTrainingOutput",
    "AculaModel",
    "AculaPreTrainedModel",
]
