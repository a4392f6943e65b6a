"""PyTorch FashionBERT: BERT over `[CLS] text [SEP] patches` with MLM, MPM and TIA heads and the adaptive loss.

Gao et al., "FashionBERT: Text and Image Matching with Adaptive Loss for Cross-modal Retrieval", SIGIR 2020
(arXiv 2005.09801); released TensorFlow code: alibaba/EasyTransfer `scripts/fashion_bert/`. The text side reuses
transformers' BERT modules unchanged (`BertEmbeddings`, `BertEncoder`, `BertPooler`, `BertLMPredictionHead`), so a
BERT checkpoint loads into `bert.*` / `cls.*` and the attention implementation (eager, sdpa, flash, flex) comes from
BERT's attention interface.
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ResNetModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertLayer,
    BertLMPredictionHead,
    BertPooler,
    BertSelfAttention,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.logging import tqdm
from transformers.utils.output_capturing import capture_outputs

from .configuration_fashionbert import FashionBertConfig


__all__ = [
    "FashionBertPreTrainedModel",
    "FashionBertModel",
    "FashionBertForPreTraining",
    "FashionBertForImageTextRetrieval",
    "FashionBertForPreTrainingOutput",
    "FashionBertForImageTextRetrievalOutput",
    "gradient_task_weights",
    "loss_softmax_task_weights",
    "masked_patch_kl",
]

# Order of the three pretraining tasks in `task_weights`.
TASKS = ("mlm", "mpm", "tia")


# ---------------------------------------------------------------------------------------------------------------------
# Loss math (pure functions, hand-checkable)
# ---------------------------------------------------------------------------------------------------------------------


def gradient_task_weights(grad_norms: torch.Tensor) -> torch.Tensor:
    """
    The paper's adaptive task weights (eq. 6) from the gradient norms of the `L` task losses, on normalised norms.

    Eq. 6: `w_i = (L - g_i^2)^-1 / sum_j (L - g_j^2)^-1`, defined only while every `g_i^2 < L`. The paper does not say
    w.r.t. which parameters the norms are taken, and their absolute scale depends entirely on that choice (measured
    on MiniLM's last layer: far above sqrt(L), where the raw formula breaks). So the squared norms are normalised to
    shares, `s_i = g_i^2 / sum_j g_j^2` in [0, 1], before eq. 6: the formula is then always defined, only the tasks'
    relative gradient sizes matter, and for `L = 3` the weights lie in [2/7, 3/7] (about [0.286, 0.429]), the range
    of the paper's Figure 4 (0.2-0.45) and of the released code. All-zero norms give equal weights; NaN norms count as
    0; infinite norms share the whole mass equally (the finite ones get share 0).

    Args:
        grad_norms: `(L,)` non-negative L2 norms `||grad l_i||`, one per task present.

    Returns:
        `(L,)` float32 weights: finite, positive, summing to 1 (detached).
    """
    norms = torch.as_tensor(grad_norms).detach().to(torch.float64).flatten().abs()
    num_tasks = norms.numel()
    if num_tasks == 0:
        raise ValueError("`grad_norms` is empty: need at least one task.")
    if num_tasks == 1:
        return torch.ones(1)  # a lone task: its share is 1 and eq. 6 would divide by L - 1 = 0
    norms = torch.nan_to_num(norms, nan=0.0, posinf=math.inf)
    infinite = torch.isinf(norms)
    if infinite.any():
        squared = infinite.to(torch.float64)
    else:
        squared = (norms / norms.max().clamp_min(torch.finfo(torch.float64).tiny)) ** 2  # ratios: no overflow
    total = squared.sum()
    shares = squared / total if total > 0 else squared
    inverse = 1.0 / (num_tasks - shares)  # eq. 6, numerator
    return (inverse / inverse.sum()).to(torch.float32)


def loss_softmax_task_weights(losses: torch.Tensor) -> torch.Tensor:
    """
    The released code's task weights: `w_i ∝ 1 / (L - softmax(losses)_i^2)`, normalised to sum to 1.

    EasyTransfer writes it for `L = K = 3` as `w_0 = (K - nG_1)(K - nG_2) / D` with `nG = softmax(G)^2` and `D` the sum
    of the pairwise products, which is the same quantity. No stop-gradient: gradients flow through the weights, as
    in the released code. For `L = 3` the weights lie in [2/7, 3/7] (about [0.286, 0.429]); a single task gets 1.

    Args:
        losses: `(L,)` task losses, one per task present.

    Returns:
        `(L,)` weights (same dtype as `losses`, attached to its graph).
    """
    losses = losses.flatten()
    if losses.numel() == 1:
        return torch.ones_like(losses)  # a lone task: the formula would be 1 / (1 - 1)
    squared = torch.softmax(losses, dim=0) ** 2
    inverse = 1.0 / (losses.numel() - squared)
    return inverse / inverse.sum()


def masked_patch_kl(logits: torch.Tensor, target_features: torch.Tensor, direction: str = "paper") -> torch.Tensor:
    """
    MPM loss per masked patch: KL divergence between `p = softmax(logits)` (the prediction) and `q =
    softmax(target_features)` (the masked patch's original feature), summed over the feature dimension.

    Args:
        logits: `(N, D)` predicted logits for N masked patches.
        target_features: `(N, D)` their original (unmasked) features.
        direction: `"paper"` for KL(p || q) (paper eq. 2) or `"code"` for KL(q || p) (the released code's Keras KLD).

    Returns:
        `(N,)` float32 KL divergence of each patch.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(target_features.detach().float(), dim=-1)
    if direction == "paper":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    if direction == "code":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    raise ValueError(f"`direction` must be 'paper' or 'code', got {direction!r}.")


def _zero_loss_like(tensor: torch.Tensor) -> torch.Tensor:
    """A zero loss still attached to `tensor`'s graph: the head gets zero gradients, so DDP sees it used."""
    return tensor.reshape(-1)[:1].float().sum() * 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FashionBertForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`FashionBertForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels`, `mpm_mask` or
            `alignment_labels` is given):
            `sum_i task_weights[i] * task_loss[i]` over the tasks present in the batch.
        mlm_loss (`torch.FloatTensor` of shape `()`, *optional*): masked language modelling cross-entropy, averaged over
            the predicted tokens of aligned rows; 0 when there is none.
        mpm_loss (`torch.FloatTensor` of shape `()`, *optional*): masked patch modelling KL divergence (direction per
            `config.mpm_kl_direction`), averaged over masked patches of aligned rows; 0 when there is none.
        tia_loss (`torch.FloatTensor` of shape `()`, *optional*): text-image alignment cross-entropy over all rows; 0
            without `alignment_labels`.
        task_weights (`torch.FloatTensor` of shape `(3,)`, *optional*): weights of (mlm, mpm, tia), detached; 0 for a
            task absent from the batch, the others sum to 1.
        mlm_logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`): MLM scores of every text
            position; with `labels` and `config.sparse_prediction` (the default) only those of the predicted
            positions of aligned rows, `(num_predicted, vocab_size)`.
        mpm_logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_feature_dim)`): MPM logits of every
            patch position (the loss uses the masked ones).
        tia_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): alignment scores from the pooled `[CLS]`; class 0
            = aligned, class 1 = not aligned (BERT's NSP convention).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`): embeddings + each
            layer's output, each `(batch_size, text_length + num_patches, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True` and eager attention): each
            layer's attention probabilities `(batch_size, num_heads, seq, seq)`.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mpm_loss: torch.FloatTensor | None = None
    tia_loss: torch.FloatTensor | None = None
    task_weights: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mpm_logits: torch.FloatTensor | None = None
    tia_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class FashionBertForImageTextRetrievalOutput(ModelOutput):
    r"""
    Output of [`FashionBertForImageTextRetrieval`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `alignment_labels` is given):
            alignment cross-entropy (class 0 = aligned).
        logits (`torch.FloatTensor` of shape `(batch_size,)`): ranking score, the log-odds of the aligned class
            `tia_logits[:, 0] - tia_logits[:, 1]` (higher = better match).
        tia_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): the two-way alignment scores.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): as in [`FashionBertForPreTrainingOutput`].
        attentions (`tuple(torch.FloatTensor)`, *optional*): as in [`FashionBertForPreTrainingOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    tia_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


def _patchify(pixel_values: torch.Tensor, patch_grid: int) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, patch_grid**2, C, H/patch_grid, W/patch_grid)`, patches in row-major order."""
    batch_size, channels, height, width = pixel_values.shape
    size_h, size_w = height // patch_grid, width // patch_grid
    patches = pixel_values.reshape(batch_size, channels, patch_grid, size_h, patch_grid, size_w)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, row, col, C, h, w)
    return patches.reshape(batch_size, patch_grid * patch_grid, channels, size_h, size_w)


def _as_list(value):
    """Config values compare equal whether stored as list or tuple."""
    return list(value) if isinstance(value, (list, tuple)) else value


class FashionBertPixelPatchifier(nn.Module):
    """
    The parameter-free "pixels" patch encoder: each patch's normalised pixels flattened channel-first (ViLT-style),
    `3 * patch_size**2` features per patch.
    """

    def __init__(self, config: FashionBertConfig):
        super().__init__()
        self.patch_grid = config.patch_grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _patchify(pixel_values, self.patch_grid).flatten(2)


class FashionBertPatchEmbeddings(nn.Module):
    """
    Patch features -> patch tokens, as in the paper and the released code: dropout on the raw features -> bias-free
    linear `patch_feature_dim -> hidden_size` -> + learned patch position embedding (own table, `num_patches` rows) +
    the "image" segment embedding (BERT's `token_type_embeddings` row 1, passed in so BERT's table is shared) ->
    LayerNorm -> dropout.
    """

    def __init__(self, config: FashionBertConfig):
        super().__init__()
        self.feature_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.projection = nn.Linear(config.patch_feature_dim, config.hidden_size, bias=False)
        self.position_embeddings = nn.Embedding(config.num_patches, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.num_patches).expand((1, -1)), persistent=False)

    def forward(self, patch_features: torch.Tensor, token_type_embeddings: nn.Embedding) -> torch.Tensor:
        num_patches = patch_features.shape[1]
        embeddings = self.projection(self.feature_dropout(patch_features))
        embeddings = embeddings + self.position_embeddings(self.position_ids[:, :num_patches])
        image_segment = torch.ones(1, 1, dtype=torch.long, device=embeddings.device)
        embeddings = embeddings + token_type_embeddings(image_segment)
        embeddings = self.LayerNorm(embeddings)
        return self.dropout(embeddings)


class FashionBertTextPatchPooler(nn.Module):
    """
    `alignment_pooling="text_patch_product"`: tanh(projection(mean text state * mean patch state)), padding excluded
    from both means. Its linear is `projection`, not BERT's `dense`, so a BERT checkpoint's `[CLS]` pooler weights
    are not loaded into it.
    """

    def __init__(self, config: FashionBertConfig):
        super().__init__()
        self.projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor, text_mask: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        text_length = text_mask.shape[1]
        text = _masked_mean(hidden_states[:, :text_length], text_mask)
        patches = _masked_mean(hidden_states[:, text_length:], patch_mask)
        return self.activation(self.projection(text * patches))


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of `(B, L, H)` states where `mask` `(B, L)` is 1 (at least one position counted)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class FashionBertPreTrainingHeads(nn.Module):
    """BERT's pretraining heads (`predictions`, `seq_relationship`) plus the MPM head `patch_predictions`."""

    def __init__(self, config: FashionBertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)
        self.patch_predictions = nn.Linear(config.hidden_size, config.patch_feature_dim)


class FashionBertOnlyAlignmentHead(nn.Module):
    """The TIA head alone, named as BERT's NSP head so pretrained (FashionBERT or BERT) weights load into it."""

    def __init__(self, config: FashionBertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class FashionBertPreTrainedModel(PreTrainedModel):
    """Weight initialisation and class attributes shared by the FashionBERT models (as `BertPreTrainedModel`)."""

    config_class = FashionBertConfig
    config: FashionBertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["BertEmbeddings", "BertLayer", "FashionBertPatchEmbeddings"]
    _can_record_outputs = {
        "hidden_states": BertLayer,
        "attentions": BertSelfAttention,
    }

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) linears/embeddings, unit LayerNorms (base class), plus BERT's extras."""
        super()._init_weights(module)
        if isinstance(module, BertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, BertEmbeddings):
            # transformers 5.x materialises buffers on the meta device: they must be (re)initialised here.
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        elif isinstance(module, FashionBertPatchEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))


class FashionBertModel(FashionBertPreTrainedModel):
    """
    The bare FashionBERT encoder: BERT embeddings for `[CLS] text [SEP]`, patch embeddings for the image patches,
    one BERT encoder over the concatenation, and BERT's pooler on `[CLS]` (or, with
    `alignment_pooling="text_patch_product"`, `FashionBertTextPatchPooler`).

    Submodules: `embeddings` (`BertEmbeddings`), `patch_encoder` (frozen: `ResNetModel` for
    `patch_encoder_type="resnet"`, a parameter-free patchifier for `"pixels"`), `patch_embeddings`, `encoder`
    (`BertEncoder`), `pooler` (`BertPooler`). The patch encoder is never trained: its parameters have
    `requires_grad=False`, it stays in eval mode (BatchNorm statistics frozen) and runs under `no_grad`.
    """

    def __init__(self, config: FashionBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        config.validate_fashionbert()
        self.config = config
        self.gradient_checkpointing = False

        self.embeddings = BertEmbeddings(config)
        if config.patch_encoder_type == "resnet":
            self.patch_encoder = ResNetModel(config.patch_encoder_config)
        else:
            self.patch_encoder = FashionBertPixelPatchifier(config)
        self.patch_embeddings = FashionBertPatchEmbeddings(config)
        self.encoder = BertEncoder(config)
        if not add_pooling_layer:
            self.pooler = None
        elif config.alignment_pooling == "text_patch_product":
            self.pooler = FashionBertTextPatchPooler(config)
        else:
            self.pooler = BertPooler(config)

        self.post_init()
        self._freeze_patch_encoder()

    def _freeze_patch_encoder(self) -> None:
        for parameter in self.patch_encoder.parameters():
            parameter.requires_grad_(False)
        self.patch_encoder.eval()

    def train(self, mode: bool = True) -> "FashionBertModel":
        """
        As `nn.Module.train`, but the patch encoder stays frozen: eval mode and `requires_grad=False` (re-applied here
        because `from_pretrained` loads fresh parameters and then calls `eval()`).
        """
        super().train(mode)
        self._freeze_patch_encoder()
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @torch.no_grad()
    def get_patch_features(self, pixel_values: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """
        Frozen patch features of images (no gradient; cache them once per image and pass them as `patch_features`).

        Args:
            pixel_values: `(batch_size, 3, image_size, image_size)` normalised RGB images (the processor's output;
                the grid is cut here).
            chunk_size: "crop" mode only: how many resized patches go through the CNN at once (default: one image's
                `num_patches`), to bound memory.

        Returns:
            `(batch_size, num_patches, patch_feature_dim)` features, patches in row-major order.
        """
        config = self.config
        expected = (3, config.image_size, config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {', '.join(map(str, expected))}), "
                f"got {tuple(pixel_values.shape)}."
            )
        if config.patch_encoder_type == "pixels":
            return self.patch_encoder(pixel_values)

        self.patch_encoder.eval()
        encoder_dtype = next(self.patch_encoder.parameters()).dtype
        pixel_values = pixel_values.to(encoder_dtype)
        batch_size = pixel_values.shape[0]
        if config.patch_feature_mode == "grid":
            # This project's addition: one pass over the whole image, final feature map pooled to the patch grid.
            feature_map = self.patch_encoder(pixel_values=pixel_values, return_dict=True).last_hidden_state
            feature_map = F.adaptive_avg_pool2d(feature_map, (config.patch_grid, config.patch_grid))
            return feature_map.flatten(2).transpose(1, 2).contiguous()

        # "crop" (paper): every patch cut out, resized to the CNN input and encoded on its own.
        patches = _patchify(pixel_values, config.patch_grid).flatten(0, 1)  # (B * P, 3, h, w)
        chunk_size = chunk_size or config.num_patches
        features = []
        for start in range(0, patches.shape[0], chunk_size):
            crops = F.interpolate(
                patches[start : start + chunk_size],
                size=(config.patch_crop_size, config.patch_crop_size),
                mode="bilinear",
                align_corners=False,
            )
            pooled = self.patch_encoder(pixel_values=crops, return_dict=True).pooler_output
            features.append(pooled.flatten(1))
        return torch.cat(features).reshape(batch_size, config.num_patches, -1)

    def load_patch_encoder_weights(self, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> None:
        """
        Load a transformers ResNet checkpoint (`ResNetModel` or `ResNetForImageClassification`, safetensors only) into
        the frozen patch encoder. Its architecture must equal `config.patch_encoder_config` (build the config with
        `patch_encoder_config=ResNetConfig.from_pretrained(path)` for another ResNet).

        Args:
            pretrained_model_name_or_path: a local folder or a Hub repo name.
            **kwargs: passed to `ResNetModel.from_pretrained` (e.g. `revision`, `local_files_only`).
        """
        if self.config.patch_encoder_type != "resnet":
            raise ValueError(
                f"`patch_encoder_type` is {self.config.patch_encoder_type!r}: there is no CNN to load weights into."
            )
        source, info = ResNetModel.from_pretrained(
            pretrained_model_name_or_path, use_safetensors=True, output_loading_info=True, **kwargs
        )
        ours, theirs = self.config.patch_encoder_config, source.config
        for name in (
            "num_channels",
            "embedding_size",
            "hidden_sizes",
            "depths",
            "layer_type",
            "hidden_act",
            "downsample_in_first_stage",
            "downsample_in_bottleneck",
        ):
            if _as_list(getattr(ours, name)) != _as_list(getattr(theirs, name)):
                raise ValueError(
                    f"`patch_encoder_config.{name}` is {getattr(ours, name)!r} but the checkpoint "
                    f"{pretrained_model_name_or_path!s} has {getattr(theirs, name)!r}."
                )
        if info["missing_keys"]:
            raise ValueError(
                f"The ResNet checkpoint {pretrained_model_name_or_path!s} lacks weights: "
                f"{sorted(info['missing_keys'])[:5]}..."
            )
        self.patch_encoder.load_state_dict(source.state_dict(), strict=True)
        self._freeze_patch_encoder()

    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        patch_features: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        mpm_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            input_ids (`(batch_size, text_length)`): `[CLS] text [SEP]` token ids from the BERT tokenizer.
            attention_mask (`(batch_size, text_length)`, *optional*): 1 for real tokens, 0 for padding.
            token_type_ids (`(batch_size, text_length)`, *optional*): text segment ids (zeros by default).
            pixel_values (`(batch_size, 3, image_size, image_size)`, *optional*): normalised images; the frozen patch
                encoder computes the patch features (exactly one of `pixel_values` / `patch_features`).
            patch_features (`(batch_size, num_patches, patch_feature_dim)`, *optional*): precomputed features.
            patch_mask (`(batch_size, num_patches)`, *optional*): 1 for real patches, 0 for patches not to attend to.
            mpm_mask (`(batch_size, num_patches)` bool, *optional*): True = patch masked for MPM; its input feature is
                zeroed (paper and code).
            output_hidden_states / output_attentions / return_dict: as in BERT.

        Returns:
            `BaseModelOutputWithPooling`: `last_hidden_state` `(batch_size, text_length + num_patches, hidden_size)`
            (text positions first, then the patches), `pooler_output` (see `alignment_pooling`), optional `hidden_states`,
            `attentions`.
        """
        if input_ids is None:
            raise ValueError("`input_ids` is required.")
        features = self._resolve_patch_features(pixel_values, patch_features, input_ids.shape[0])
        batch_size, text_length = input_ids.shape
        if text_length > self.config.max_position_embeddings:
            raise ValueError(
                f"`input_ids` has {text_length} tokens, more than max_position_embeddings "
                f"({self.config.max_position_embeddings})."
            )
        if mpm_mask is not None:
            if tuple(mpm_mask.shape) != tuple(features.shape[:2]):
                raise ValueError(f"`mpm_mask` must have shape {tuple(features.shape[:2])}, got {tuple(mpm_mask.shape)}.")
            features = features.masked_fill(mpm_mask.bool().unsqueeze(-1), 0.0)

        text_embeddings = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        patch_embeddings = self.patch_embeddings(
            features.to(self.patch_embeddings.projection.weight.dtype), self.embeddings.token_type_embeddings
        )
        embedding_output = torch.cat([text_embeddings, patch_embeddings], dim=1)

        if attention_mask is None:
            attention_mask = torch.ones(batch_size, text_length, dtype=torch.long, device=input_ids.device)
        if patch_mask is None:
            patch_mask = torch.ones(features.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        elif tuple(patch_mask.shape) != tuple(features.shape[:2]):
            raise ValueError(f"`patch_mask` must have shape {tuple(features.shape[:2])}, got {tuple(patch_mask.shape)}.")
        full_mask = torch.cat([attention_mask, patch_mask.to(attention_mask.dtype)], dim=1)
        # Exactly as BertModel: the implementation-specific mask (None when nothing is padded, for sdpa).
        encoder_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=full_mask
        )

        encoder_outputs = self.encoder(embedding_output, attention_mask=encoder_mask, **kwargs)
        sequence_output = encoder_outputs.last_hidden_state
        if self.pooler is None:
            pooled_output = None
        elif isinstance(self.pooler, FashionBertTextPatchPooler):
            pooled_output = self.pooler(sequence_output, attention_mask, patch_mask)
        else:
            pooled_output = self.pooler(sequence_output)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)

    def _resolve_patch_features(
        self, pixel_values: torch.Tensor | None, patch_features: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """Exactly one of `pixel_values` / `patch_features` -> `(B, num_patches, patch_feature_dim)` features."""
        if (pixel_values is None) == (patch_features is None):
            raise ValueError("Pass exactly one of `pixel_values` and `patch_features`.")
        if pixel_values is not None:
            patch_features = self.get_patch_features(pixel_values)
        expected = (batch_size, self.config.num_patches, self.config.patch_feature_dim)
        if tuple(patch_features.shape) != expected:
            raise ValueError(f"`patch_features` must have shape {expected}, got {tuple(patch_features.shape)}.")
        return patch_features


class FashionBertForPreTraining(FashionBertPreTrainedModel):
    """
    FashionBERT with its three pretraining heads (`cls.predictions` MLM tied to the word embeddings,
    `cls.patch_predictions` MPM, `cls.seq_relationship` TIA) and the task weighting of `config.task_weighting`.
    Names mirror `BertForPreTraining`, so a BERT checkpoint fills `bert.*`, `cls.predictions` and (its NSP head)
    `cls.seq_relationship`.

    Adaptive weights (`task_weighting="gradient"`) are computed inside `forward` with `torch.autograd.grad` w.r.t.
    the last encoder layer's parameters (`retain_graph=True`): gradients are returned, never accumulated into
    `.grad`, so DistributedDataParallel's reducer hooks do not fire and a single `loss.backward()` follows as usual.
    Each process weighs its own local batch (no collective inside `forward`). It needs non-reentrant activation
    checkpointing (transformers' default) when checkpointing is on. A task absent from a batch contributes a zero
    loss still attached to its head, so every trainable parameter receives a (zero) gradient and DDP needs no
    `find_unused_parameters`. The frozen patch encoder has `requires_grad=False` and is outside DDP's reducer.
    With fp16 autocast the task gradients are taken on the unscaled losses and may underflow to 0 (the guard then
    gives equal weights); bf16 or fp32 do not have this problem.
    """

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: FashionBertConfig):
        super().__init__(config)
        self.bert = FashionBertModel(config)
        self.cls = FashionBertPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters the "gradient" weighting measures task gradients on: the last encoder layer's."""
        return [p for p in self.bert.encoder.layer[-1].parameters() if p.requires_grad]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        patch_features: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        mpm_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        alignment_labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> FashionBertForPreTrainingOutput:
        r"""
        Inputs as [`FashionBertModel.forward`], plus:
            labels (`(batch_size, text_length)`, *optional*): MLM targets, -100 where not predicted.
            alignment_labels (`(batch_size,)`, *optional*): 0 = aligned pair, 1 = not aligned. When given, MLM and
                MPM count only on aligned rows (a negative pair's text does not describe its image).
            mpm_mask (`(batch_size, num_patches)` bool, *optional*): patches masked for MPM (input zeroed, original
                feature the KL target).

        A task with nothing to predict in the batch (no label, no masked patch on an aligned row, no alignment
        labels) has loss 0 and weight 0; the other weights are renormalised. `loss` is None when no target is given.
        """
        if input_ids is None:
            raise ValueError("`input_ids` is required.")
        features = self.bert._resolve_patch_features(pixel_values, patch_features, input_ids.shape[0])
        outputs = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            patch_features=features,
            patch_mask=patch_mask,
            mpm_mask=mpm_mask,
            return_dict=True,
            **kwargs,
        )
        text_length = input_ids.shape[1]
        sequence_output = outputs.last_hidden_state
        text_output = sequence_output[:, :text_length]
        aligned = None if alignment_labels is None else alignment_labels.to(input_ids.device) == 0
        if labels is not None:
            labels = self._mlm_targets(labels.to(input_ids.device), text_output.shape[:2], aligned)
        if labels is not None and self.config.sparse_prediction:
            predicted = labels != -100
            mlm_logits = self.cls.predictions(text_output[predicted])  # (num_predicted, vocab_size)
            mlm_targets = labels[predicted]
        else:
            mlm_logits = self.cls.predictions(text_output)
            mlm_targets = labels
        mpm_logits = self.cls.patch_predictions(sequence_output[:, text_length:])
        tia_logits = self.cls.seq_relationship(outputs.pooler_output)

        loss = mlm_loss = mpm_loss = tia_loss = task_weights = None
        if labels is not None or mpm_mask is not None or alignment_labels is not None:
            mlm_loss, mlm_present = self._mlm_loss(mlm_logits, mlm_targets)
            mpm_loss, mpm_present = self._mpm_loss(mpm_logits, features, mpm_mask, patch_mask, aligned)
            tia_loss, tia_present = self._tia_loss(tia_logits, alignment_labels)
            losses = torch.stack([mlm_loss, mpm_loss, tia_loss])
            present = torch.tensor([mlm_present, mpm_present, tia_present], device=losses.device)
            weights = self._task_weights(losses, present)
            loss = (weights * losses).sum()
            task_weights = weights.detach()

        return FashionBertForPreTrainingOutput(
            loss=loss,
            mlm_loss=mlm_loss,
            mpm_loss=mpm_loss,
            tia_loss=tia_loss,
            task_weights=task_weights,
            mlm_logits=mlm_logits,
            mpm_logits=mpm_logits,
            tia_logits=tia_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @staticmethod
    def _mlm_targets(labels: torch.Tensor, text_shape: torch.Size, aligned: torch.Tensor | None) -> torch.Tensor:
        """MLM labels with the rows of non-aligned pairs ignored (their text does not describe their image)."""
        if tuple(labels.shape) != tuple(text_shape):
            raise ValueError(f"`labels` must have shape {tuple(text_shape)}, got {tuple(labels.shape)}.")
        if aligned is not None:
            labels = labels.masked_fill(~aligned.unsqueeze(1), -100)
        return labels

    def _mlm_loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """MLM cross-entropy over the labelled tokens (mean), and whether there were any."""
        if labels is None or not (labels != -100).any():
            return _zero_loss_like(self.cls.predictions.bias if logits.numel() == 0 else logits), False
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return loss, True

    def _mpm_loss(
        self,
        logits: torch.Tensor,
        features: torch.Tensor,
        mpm_mask: torch.Tensor | None,
        patch_mask: torch.Tensor | None,
        aligned: torch.Tensor | None,
    ) -> tuple[torch.Tensor, bool]:
        """MPM KL (eq. 2 or the code's direction) averaged over masked real patches of aligned rows."""
        if mpm_mask is None:
            return _zero_loss_like(logits), False
        selected = mpm_mask.to(logits.device).bool()
        if patch_mask is not None:
            selected = selected & patch_mask.to(logits.device).bool()
        if aligned is not None:
            selected = selected & aligned.unsqueeze(1)
        if not selected.any():
            return _zero_loss_like(logits), False
        kl = masked_patch_kl(logits[selected], features.to(logits.device)[selected], self.config.mpm_kl_direction)
        return kl.mean(), True

    def _tia_loss(self, logits: torch.Tensor, alignment_labels: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """Two-way alignment cross-entropy (class 0 = aligned, as BERT's NSP)."""
        if alignment_labels is None or alignment_labels.numel() == 0:
            return _zero_loss_like(logits), False
        return F.cross_entropy(logits.float(), alignment_labels.to(logits.device).long().reshape(-1)), True

    def _task_weights(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """`(3,)` weights of (mlm, mpm, tia): 0 for absent tasks, the rule of `config.task_weighting` for the rest."""
        weights = torch.zeros(3, dtype=losses.dtype, device=losses.device)
        if not present.any():
            return weights
        index = present.nonzero().flatten()
        equal = torch.full((index.numel(),), 1.0 / index.numel(), dtype=losses.dtype, device=losses.device)
        if self.config.task_weighting == "fixed":
            present_weights = equal
        elif self.config.task_weighting == "loss_softmax":
            present_weights = loss_softmax_task_weights(losses[index])
        else:
            norms = self._task_gradient_norms([losses[i] for i in index.tolist()])
            present_weights = equal if norms is None else gradient_task_weights(norms).to(losses)
        return weights.index_put((index,), present_weights)

    def _task_gradient_norms(self, task_losses: list[torch.Tensor]) -> torch.Tensor | None:
        """
        L2 norm of each task loss's gradient w.r.t. `shared_parameters()`, or None (-> equal weights) outside
        training, with gradients disabled, or when nothing there requires grad.
        """
        parameters = self.shared_parameters()
        if not (self.training and torch.is_grad_enabled() and parameters):
            return None
        norms = []
        reached = False
        for task_loss in task_losses:
            if not task_loss.requires_grad:
                norms.append(torch.zeros((), dtype=torch.float64, device=task_loss.device))
                continue
            # Gradients are returned, not accumulated into .grad (DDP's hooks do not fire); the graph is kept for
            # the caller's backward.
            grads = torch.autograd.grad(task_loss, parameters, retain_graph=True, allow_unused=True)
            reached = reached or any(g is not None for g in grads)
            squared = sum(g.detach().to(torch.float64).pow(2).sum() for g in grads if g is not None)
            norms.append(torch.as_tensor(squared, dtype=torch.float64, device=task_loss.device).sqrt())
        if not reached:
            # Every head reads the last layer, so this only happens when its parameters are outside the graph.
            raise RuntimeError(
                "task_weighting='gradient' could not reach the last encoder layer's parameters in the autograd graph. "
                "Reentrant activation checkpointing hides them: enable checkpointing with use_reentrant=False "
                "(transformers' default), or use task_weighting='loss_softmax' or 'fixed'."
            )
        return torch.stack(norms)


class FashionBertForImageTextRetrieval(FashionBertPreTrainedModel):
    """
    FashionBERT as a text-image matcher: the TIA head on the pooled `[CLS]` gives the ranking score, the log-odds of
    "aligned" (`tia_logits[:, 0] - tia_logits[:, 1]`). Same `bert.*` and `cls.seq_relationship` names as
    [`FashionBertForPreTraining`], so a pretraining checkpoint loads with only the MLM/MPM heads unused (the paper
    evaluates the pretrained model directly).
    """

    def __init__(self, config: FashionBertConfig):
        super().__init__(config)
        self.bert = FashionBertModel(config)
        self.cls = FashionBertOnlyAlignmentHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        patch_features: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        alignment_labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> FashionBertForImageTextRetrievalOutput:
        r"""
        Inputs as [`FashionBertModel.forward`], plus `alignment_labels` (`(batch_size,)`, 0 = aligned, 1 = not) for
        the loss. Returns `logits` `(batch_size,)`, the aligned-class log-odds.
        """
        outputs = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            patch_features=patch_features,
            patch_mask=patch_mask,
            return_dict=True,
            **kwargs,
        )
        tia_logits = self.cls.seq_relationship(outputs.pooler_output)
        logits = tia_logits[:, 0] - tia_logits[:, 1]
        loss = None
        if alignment_labels is not None:
            loss = F.cross_entropy(tia_logits.float(), alignment_labels.to(tia_logits.device).long().reshape(-1))
        return FashionBertForImageTextRetrievalOutput(
            loss=loss,
            logits=logits,
            tia_logits=tia_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @torch.no_grad()
    def score_pairs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        patch_features: torch.Tensor,
        text_indices: torch.Tensor,
        image_indices: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        batch_size: int = 128,
        show_progress: bool = False,
    ) -> torch.Tensor:
        """
        Scores of many (text, image) pairs, each image's cached patch features reused across texts.

        Args:
            input_ids: `(num_texts, text_length)` tokenised texts (any padding side).
            attention_mask: `(num_texts, text_length)`.
            patch_features: `(num_images, num_patches, patch_feature_dim)` features computed once per image (e.g.
                `model.bert.get_patch_features`); a tensor or numpy array, on any device.
            text_indices, image_indices: `(num_pairs,)` the pair `k` is (text `text_indices[k]`, image
                `image_indices[k]`).
            token_type_ids: `(num_texts, text_length)`, *optional*.
            batch_size: pairs per forward pass.
            show_progress: show a progress bar.

        Returns:
            `(num_pairs,)` float32 scores on CPU (aligned-class log-odds, higher = better match). Runs in eval mode
            under `no_grad` (the training mode is restored afterwards). Each batch's texts are trimmed to the
            longest one in it (trailing columns that are padding in every row are dropped).
        """
        text_indices = torch.as_tensor(text_indices, dtype=torch.long).flatten()
        image_indices = torch.as_tensor(image_indices, dtype=torch.long).flatten()
        if text_indices.numel() != image_indices.numel():
            raise ValueError(
                f"`text_indices` ({text_indices.numel()}) and `image_indices` ({image_indices.numel()}) differ in length."
            )
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
        patch_features = torch.as_tensor(patch_features)
        device = self.device
        dtype = self.bert.patch_embeddings.projection.weight.dtype
        was_training = self.training
        self.eval()
        scores = []
        try:
            starts = range(0, text_indices.numel(), batch_size)
            for start in tqdm(starts, desc="scoring pairs", disable=not show_progress):
                texts = text_indices[start : start + batch_size]
                images = image_indices[start : start + batch_size]
                ids = input_ids[texts.to(input_ids.device)]
                mask = attention_mask[texts.to(attention_mask.device)]
                types = None if token_type_ids is None else token_type_ids[texts.to(token_type_ids.device)]
                used = mask.bool().any(dim=0).nonzero()
                length = int(used.max()) + 1 if used.numel() else 1
                features = patch_features[images.to(patch_features.device)]
                output = self(
                    input_ids=ids[:, :length].to(device),
                    attention_mask=mask[:, :length].to(device),
                    token_type_ids=None if types is None else types[:, :length].to(device),
                    patch_features=features.to(device=device, dtype=dtype),
                    return_dict=True,
                )
                scores.append(output.logits.float().cpu())
        finally:
            self.train(was_training)
        if not scores:
            return torch.zeros(0)
        return torch.cat(scores)
