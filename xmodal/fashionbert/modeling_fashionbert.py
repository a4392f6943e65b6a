"""PyTorch FashionBERT: BERT over `[CLS] text [SEP] patches` with MLM, MPM and TIA heads and the adaptive loss.

Gao et al., "FashionBERT: Text and Image Matching with Adaptive Loss for Cross-modal Retrieval", SIGIR 2020
(arXiv 2005.09801); released TensorFlow code: alibaba/EasyTransfer `scripts/fashion_bert/`. The text side reuses
transformers' BERT modules unchanged (`BertEmbeddings`, `BertEncoder`, `BertPooler`, `BertLMPredictionHead`), so a
BERT checkpoint loads into `bert.*` / `cls.*` and the attention implementation (eager, sdpa, flash, flex) comes from
BERT's attention interface.
"""

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
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
from transformers.utils import logging
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
    "image_text_contrastive_loss",
    "masked_patch_kl",
    "sample_hard_negatives",
]

# Order of the pretraining tasks in `task_weights`: the paper's three, then the image-text contrastive task when the
# config has dual-encoder heads (`contrastive_projection_dim`).
TASKS = ("mlm", "mpm", "tia", "itc")


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


def image_text_contrastive_loss(
    text_embeddings: torch.Tensor, image_embeddings: torch.Tensor, logit_scale: torch.Tensor, matching: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Symmetric InfoNCE over a batch of aligned pairs (CLIP; ALBEF's image-text contrastive task): row `i` of each side
    is the positive of row `i` of the other, every other row a negative.

    Args:
        text_embeddings, image_embeddings: `(N, D)` unit-length embeddings of N aligned pairs.
        logit_scale: log of the inverse temperature (clamped to 100 after `exp`, as CLIP).
        matching: `(N, N)` bool, *optional*: pairs of rows that match each other (the same caption, or two views of
            one product), which are not each other's negatives.

    Returns:
        The mean of the text-to-image and image-to-text cross-entropies (float32).
    """
    logits = logit_scale.exp().clamp(max=100) * text_embeddings.float() @ image_embeddings.float().T
    if matching is not None:
        others = matching & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(others, torch.finfo(logits.dtype).min)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def sample_hard_negatives(
    logits: torch.Tensor, allowed: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """
    ALBEF's hard negatives: for every row of a similarity matrix, `num_samples` distinct columns drawn without
    replacement with probability `softmax(logits[row])` restricted to the `allowed` columns. The most similar
    non-matching items are the likeliest, yet never certain, so a near-duplicate the labels call a negative does not
    come back every step (ALBEF, `models/model_retrieval.py`).

    Args:
        logits: `(N, M)` similarities, e.g. the contrastive task's logits (text rows x image columns).
        allowed: `(N, M)` bool: which columns may be a row's negative (not itself, not a match).
        num_samples: negatives per row.
        generator: source of randomness (default: torch's global RNG, which accelerate seeds and checkpoints).

    Returns:
        `(N, num_samples)` int64 column indices in the order drawn; -1 where a row has fewer allowed columns than
        `num_samples`.
    """
    if logits.shape != allowed.shape:
        raise ValueError(f"`logits` {tuple(logits.shape)} and `allowed` {tuple(allowed.shape)} must have the same shape.")
    if num_samples < 0:
        raise ValueError(f"`num_samples` must be >= 0, got {num_samples}.")
    if num_samples == 0 or logits.shape[1] == 0:
        return torch.full((logits.shape[0], num_samples), -1, dtype=torch.long, device=logits.device)
    # Gumbel-top-k: the k largest of logits + Gumbel noise are k draws without replacement from the softmax.
    uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(logits.device)
    keys = logits.double() - torch.log(-torch.log(uniform.clamp(min=1e-300)))
    keys = keys.masked_fill(~allowed, -math.inf)
    values, picks = keys.topk(min(num_samples, logits.shape[1]), dim=1)
    picks = picks.masked_fill(values == -math.inf, -1)
    if picks.shape[1] < num_samples:  # fewer columns than samples
        picks = F.pad(picks, (0, num_samples - picks.shape[1]), value=-1)
    return picks


class _ContrastivePass(NamedTuple):
    """What the contrastive task computed on a batch's aligned rows (see `FashionBertForPreTraining._contrastive`)."""

    loss: torch.Tensor
    rows: torch.Tensor  # (n,) batch rows of the aligned pairs
    states: tuple[torch.Tensor, ...]  # the unimodal last hidden states its heads read
    logits: torch.Tensor  # (n, n) detached text x image logits
    allowed: torch.Tensor  # (n, n) bool: may be each other's negatives (neither the same caption nor product)


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
        itc_loss (`torch.FloatTensor` of shape `()`, *optional*): with `config.contrastive_projection_dim`, the
            image-text contrastive loss of the aligned rows' unimodal embeddings; 0 with fewer than two such rows.
        task_weights (`torch.FloatTensor` of shape `(num_tasks,)`, *optional*): weights of (mlm, mpm, tia[, itc]),
            detached; 0 for a task absent from the batch, the others sum to 1.
        mlm_logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`): MLM scores of every text
            position; with `labels` and `config.sparse_prediction` (the default) only those of the predicted
            positions of aligned rows, `(num_predicted, vocab_size)`.
        mpm_logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_feature_dim)`): MPM logits of every
            patch position (the loss uses the masked ones).
        tia_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): alignment scores from the pooled `[CLS]`; class 0
            = aligned, class 1 = not aligned (BERT's NSP convention). With `num_hard_negatives`, the mined rows follow
            the batch's own rows (here and in `mpm_logits`).
        hard_negative_pairs (`torch.LongTensor` of shape `(num_mined, 2)`, *optional*, with `num_hard_negatives`):
            the batch rows whose text and whose image make each mined negative, in the order they were appended.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`): embeddings + each
            layer's output, each `(batch_size, text_length + num_patches, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True` and eager attention): each
            layer's attention probabilities `(batch_size, num_heads, seq, seq)`.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mpm_loss: torch.FloatTensor | None = None
    tia_loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    task_weights: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mpm_logits: torch.FloatTensor | None = None
    tia_logits: torch.FloatTensor | None = None
    hard_negative_pairs: torch.LongTensor | None = None
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


def _text_batch(
    input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
) -> tuple[int, int, torch.device]:
    """`(batch_size, text_length, device)` of the text, given as exactly one of `input_ids` / `inputs_embeds`."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    text = input_ids if input_ids is not None else inputs_embeds
    return text.shape[0], text.shape[1], text.device


logger = logging.get_logger(__name__)

# Config fields of a CNN that do not change what its backbone computes from its weights: metadata, the classifier's,
# training-only ones. Everything else must match between a patch encoder and the weights loaded into it.
_NON_ARCHITECTURE_FIELDS = frozenset(
    {"transformers_version", "_name_or_path", "model_type", "image_size", "initializer_range", "classifier_dropout_prob",
     "semantic_loss_ignore_index", "drop_path_rate", "out_features", "out_indices", "stage_names"}
)  # fmt: skip


def _as_list(value):
    """Config values compare equal whether stored as list or tuple."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _architecture_differences(ours: PreTrainedConfig, theirs: PreTrainedConfig) -> list[tuple[str, object, object]]:
    """`(field, ours, theirs)` for every architecture field two CNN configs disagree on."""
    common = PreTrainedConfig().to_dict().keys()
    ours, theirs = ours.to_dict(), theirs.to_dict()
    names = sorted((ours.keys() | theirs.keys()) - _NON_ARCHITECTURE_FIELDS - common)
    return [(name, ours.get(name), theirs.get(name)) for name in names if _as_list(ours.get(name)) != _as_list(theirs.get(name))]


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


class FashionBertBilinearPooler(nn.Module):
    """
    `alignment_pooling="text_patch_bilinear"`: low-rank bilinear pooling (Kim et al., "Hadamard Product for Low-rank
    Bilinear Pooling", ICLR 2017) of the joint encoder's mean text state `t` and mean patch state `p` (padding
    excluded): `tanh(text_projection(norm(t)) * patch_projection(norm(p)))`. Each output unit is a rank-one bilinear
    form `(u_k . t)(v_k . p)`, so the head can compare the two modalities in coordinates it learns, which an
    elementwise product of `t` and `p` cannot. `norm` standardises every feature (BatchNorm without affine: batch
    statistics in training, running statistics in evaluation, so a pair's score never depends on its batch): encoder
    states share a large common component across examples that otherwise hides the differences between pairs.
    """

    def __init__(self, config: FashionBertConfig):
        super().__init__()
        self.text_norm = nn.BatchNorm1d(config.hidden_size, affine=False)
        self.patch_norm = nn.BatchNorm1d(config.hidden_size, affine=False)
        self.text_projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.patch_projection = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor, text_mask: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        text_length = text_mask.shape[1]
        text = _standardise(self.text_norm, _masked_mean(hidden_states[:, :text_length], text_mask))
        patches = _standardise(self.patch_norm, _masked_mean(hidden_states[:, text_length:], patch_mask))
        return self.activation(self.text_projection(text) * self.patch_projection(patches))


def _standardise(norm: nn.BatchNorm1d, features: torch.Tensor) -> torch.Tensor:
    """`norm(features)`, with the running statistics for a batch of one row (batch statistics need two)."""
    use_batch = norm.training and features.shape[0] > 1
    return F.batch_norm(
        features, norm.running_mean, norm.running_var, training=use_batch, momentum=norm.momentum, eps=norm.eps
    )


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
    # BERT's layers are `GradientCheckpointingLayer`s: transformers' `activation_checkpointing_enable()` recomputes them.
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

    def set_attn_implementation(self, attn_implementation: str | dict, allow_all_kernels: bool = False) -> None:
        """
        As `PreTrainedModel.set_attn_implementation`, but a CNN patch encoder stays eager: it has no attention, and some
        CNN classes refuse every other implementation.
        """
        if isinstance(attn_implementation, str) and self.config.patch_encoder_config is not None:
            attn_implementation = {"": attn_implementation, "patch_encoder_config": "eager"}
        super().set_attn_implementation(attn_implementation, allow_all_kernels=allow_all_kernels)

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
        if getattr(module, "task_gradient_norm_mean", None) is not None:
            init.zeros_(module.task_gradient_norm_mean)
        if isinstance(getattr(module, "logit_scale", None), nn.Parameter):
            init.constant_(module.logit_scale, self.config.contrastive_logit_scale_init)


class FashionBertModel(FashionBertPreTrainedModel):
    """
    The bare FashionBERT encoder: BERT embeddings for `[CLS] text [SEP]`, patch embeddings for the image patches,
    one BERT encoder over the concatenation, and BERT's pooler on `[CLS]` (or, with
    `alignment_pooling="text_patch_product"`, `FashionBertTextPatchPooler`).

    Submodules: `embeddings` (`BertEmbeddings`), `patch_encoder` (frozen: the CNN `patch_encoder_type` names, e.g.
    `ResNetModel` or `MobileNetV2Model`; a parameter-free patchifier for `"pixels"`), `patch_embeddings`, `encoder`
    (`BertEncoder`), `pooler` (`BertPooler`). The patch encoder is never trained: its parameters have
    `requires_grad=False`, it stays in eval mode (BatchNorm statistics frozen) and runs under `no_grad`.
    """

    def __init__(self, config: FashionBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        config.validate_fashionbert()
        self.config = config
        self.gradient_checkpointing = False

        self.embeddings = BertEmbeddings(config)
        if config.patch_encoder_type == "pixels":
            self.patch_encoder = FashionBertPixelPatchifier(config)
        else:
            # A CNN has no attention: eager, whatever a caller asks of the whole model (some refuse sdpa outright).
            self.patch_encoder = AutoModel.from_config(config.patch_encoder_config, attn_implementation="eager")
        self.patch_embeddings = FashionBertPatchEmbeddings(config)
        self.encoder = BertEncoder(config)
        if config.contrastive_projection_dim is not None:
            # Dual-encoder heads (CLIP's names): text alone and patches alone through the same encoder.
            self.text_projection = nn.Linear(config.hidden_size, config.contrastive_projection_dim, bias=False)
            self.visual_projection = nn.Linear(config.hidden_size, config.contrastive_projection_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(config.contrastive_logit_scale_init))
        if not add_pooling_layer:
            self.pooler = None
        elif config.alignment_pooling == "text_patch_product":
            self.pooler = FashionBertTextPatchPooler(config)
        elif config.alignment_pooling == "text_patch_bilinear":
            self.pooler = FashionBertBilinearPooler(config)
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
            if min(feature_map.shape[-2:]) < config.patch_grid:
                logger.warning_once(
                    f"the patch encoder's last feature map is {tuple(feature_map.shape[-2:])} for a {config.patch_grid}x"
                    f"{config.patch_grid} patch grid: neighbouring patches share features (a stride-32 CNN needs "
                    f"image_size >= {32 * config.patch_grid})."
                )
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
            # The global average of the last feature map (ResNet's and MobileNetV2's pooler; ConvNeXt's before its
            # LayerNorm), so that a crop's feature is what grid mode averages over a cell.
            feature_map = self.patch_encoder(pixel_values=crops, return_dict=True).last_hidden_state
            features.append(feature_map.mean(dim=(-2, -1)))
        return torch.cat(features).reshape(batch_size, config.num_patches, -1)

    def _encode_alone(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states of one modality's embeddings through the encoder on their own."""
        encoder_mask = create_bidirectional_mask(config=self.config, inputs_embeds=embeddings, attention_mask=mask)
        return self.encoder(embeddings, attention_mask=encoder_mask).last_hidden_state

    def _require_projections(self) -> None:
        if self.config.contrastive_projection_dim is None:
            raise ValueError(
                "this FashionBERT has no dual-encoder heads: set `contrastive_projection_dim` in its config (and train "
                "them) to get text and image embeddings."
            )

    def text_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[CLS] text [SEP]` alone through the encoder: `(batch_size, text_length, hidden_size)`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._encode_alone(self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids), attention_mask)

    def image_hidden_states(self, patch_features: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The patches alone through the encoder: `(batch_size, num_patches, hidden_size)`."""
        if patch_mask is None:
            patch_mask = torch.ones(patch_features.shape[:2], dtype=torch.long, device=patch_features.device)
        embeddings = self.patch_embeddings(
            patch_features.to(self.patch_embeddings.projection.weight.dtype), self.embeddings.token_type_embeddings
        )
        return self._encode_alone(embeddings, patch_mask)

    def project_text(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-length text embeddings from `text_hidden_states`: masked mean, `text_projection`, L2 norm."""
        return F.normalize(self.text_projection(_masked_mean(hidden_states, attention_mask)), dim=-1)

    def project_image(self, hidden_states: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings from `image_hidden_states`: masked mean, `visual_projection`, L2 norm."""
        return F.normalize(self.visual_projection(_masked_mean(hidden_states, patch_mask)), dim=-1)

    def get_text_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Unit-length embeddings of texts encoded alone, `(batch_size, contrastive_projection_dim)`: compare them with
        `get_image_embeddings` by a dot product (the first stage of a search; the cross-encoder re-ranks).
        """
        self._require_projections()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.project_text(self.text_hidden_states(input_ids, attention_mask, token_type_ids), attention_mask)

    def get_image_embeddings(
        self,
        pixel_values: torch.Tensor | None = None,
        patch_features: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit-length embeddings of images encoded alone, `(batch_size, contrastive_projection_dim)` (see
        `get_text_embeddings`). Pass exactly one of `pixel_values` and `patch_features`."""
        self._require_projections()
        given = patch_features if patch_features is not None else pixel_values
        features = self._resolve_patch_features(pixel_values, patch_features, 0 if given is None else given.shape[0])
        if patch_mask is None:
            patch_mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
        return self.project_image(self.image_hidden_states(features, patch_mask), patch_mask)

    def fuse_scores(
        self, log_odds: torch.Tensor, similarity: torch.Tensor, weight: float | None = None
    ) -> torch.Tensor:
        """
        The score retrieval ranks by, from the two stages' scores of the same pairs: with fusion weight `w`
        (`config.fusion_weight` unless `weight` is given), `(1 - w) * exp(logit_scale) * similarity + w * log_odds`,
        i.e. the first stage's contrastive logit and the cross-encoder's aligned-class log-odds, both log-domain
        scores, blended by the cross-encoder's share `w`; the log-odds alone when `w` is None (the paper).

        Args:
            log_odds: `(N,)` the cross-encoder's scores (`FashionBertForImageTextRetrieval`'s `logits`).
            similarity: `(N,)` cosine similarities of the pairs' unit-length embeddings (`get_text_embeddings` x
                `get_image_embeddings`).
            weight: overrides `config.fusion_weight` (in [0, 1]).

        Returns:
            `(N,)` float32 scores (higher = better match).
        """
        weight = self.config.fusion_weight if weight is None else weight
        if weight is None:
            return log_odds.float()
        self._require_projections()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the fusion weight must be in [0, 1], got {weight}.")
        scale = self.logit_scale.detach().float().exp().clamp(max=100).to(similarity.device)
        return (1.0 - weight) * scale * similarity.float() + weight * log_odds.float().to(similarity.device)

    def load_patch_encoder_weights(self, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> None:
        """
        Load a transformers checkpoint of the patch encoder's CNN (the bare model or its image classifier, e.g.
        `ResNetForImageClassification`; safetensors only) into the frozen patch encoder. Its architecture must equal
        `config.patch_encoder_config` (build the config with `patch_encoder_config=AutoConfig.from_pretrained(path)`).

        Args:
            pretrained_model_name_or_path: a local folder or a Hub repo name.
            **kwargs: passed to `AutoModel.from_pretrained` (e.g. `revision`, `local_files_only`).
        """
        patch_encoder_type = self.config.patch_encoder_type
        if patch_encoder_type == "pixels":
            raise ValueError("`patch_encoder_type` is 'pixels': there is no CNN to load weights into.")
        # A classifier checkpoint's head is reported as unexpected: expected here, so the report is kept quiet.
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            source, info = AutoModel.from_pretrained(
                pretrained_model_name_or_path, use_safetensors=True, output_loading_info=True, **kwargs
            )
        finally:
            logging.set_verbosity(verbosity)
        if source.config.model_type != patch_encoder_type:
            raise ValueError(
                f"{pretrained_model_name_or_path!s} is a {source.config.model_type!r} checkpoint but "
                f"`patch_encoder_type` is {patch_encoder_type!r}."
            )
        for name, ours, theirs in _architecture_differences(self.config.patch_encoder_config, source.config)[:1]:
            raise ValueError(
                f"`patch_encoder_config.{name}` is {ours!r} but the checkpoint {pretrained_model_name_or_path!s} has "
                f"{theirs!r} (build the config with patch_encoder_config=AutoConfig.from_pretrained(path))."
            )
        if info["missing_keys"]:
            raise ValueError(
                f"The {patch_encoder_type} checkpoint {pretrained_model_name_or_path!s} lacks weights: "
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
        inputs_embeds: torch.Tensor | None = None,
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
            inputs_embeds (`(batch_size, text_length, hidden_size)`, *optional*): the text's word embeddings instead
                of `input_ids` (exactly one of the two, as in BERT); position and segment embeddings are added as usual.
            output_hidden_states / output_attentions / return_dict: as in BERT.

        Returns:
            `BaseModelOutputWithPooling`: `last_hidden_state` `(batch_size, text_length + num_patches, hidden_size)`
            (text positions first, then the patches), `pooler_output` (see `alignment_pooling`), optional `hidden_states`,
            `attentions`.
        """
        batch_size, text_length, text_device = _text_batch(input_ids, inputs_embeds)
        features = self._resolve_patch_features(pixel_values, patch_features, batch_size)
        if text_length > self.config.max_position_embeddings:
            raise ValueError(
                f"The text has {text_length} tokens, more than max_position_embeddings "
                f"({self.config.max_position_embeddings})."
            )
        if mpm_mask is not None:
            if tuple(mpm_mask.shape) != tuple(features.shape[:2]):
                raise ValueError(f"`mpm_mask` must have shape {tuple(features.shape[:2])}, got {tuple(mpm_mask.shape)}.")
            features = features.masked_fill(mpm_mask.bool().unsqueeze(-1), 0.0)

        text_embeddings = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        patch_embeddings = self.patch_embeddings(
            features.to(self.patch_embeddings.projection.weight.dtype), self.embeddings.token_type_embeddings
        )
        embedding_output = torch.cat([text_embeddings, patch_embeddings], dim=1)

        if attention_mask is None:
            attention_mask = torch.ones(batch_size, text_length, dtype=torch.long, device=text_device)
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
        elif self.config.alignment_pooling != "cls":  # by the config, so a wrapped pooler (PEFT) is called the same way
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
    the last hidden states (`retain_graph=True`): gradients are returned, never accumulated into `.grad`, so
    DistributedDataParallel's reducer hooks do not fire and a single `loss.backward()` follows as usual. By default
    each process weighs its own local batch and keeps its own running means of the norms (the buffer
    `task_gradient_norm_mean`, saved with the weights). Under data parallelism, set `task_statistics_reducer` to a
    function that sums a tensor over the processes (train.py passes accelerate's `reduce(..., "sum")`): the per-task
    gradient statistics are then reduced before eq. 6, so every process uses the weights (and running means) that one
    process would compute on the global batch. The model itself never calls a collective. A task absent from a batch
    contributes a zero loss still attached to its head, so every trainable parameter receives a (zero) gradient and
    DDP needs no `find_unused_parameters`. The frozen patch encoder has `requires_grad=False` and is outside DDP's
    reducer.
    With fp16 autocast the task gradients are taken on the unscaled losses and may underflow to 0 (the guard then
    gives equal weights); bf16 or fp32 do not have this problem.
    """

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    # Training state, not a weight: a checkpoint without it (a BERT, an older FashionBERT) starts it at zero.
    _keys_to_ignore_on_load_missing = [r"task_gradient_norm_mean"]

    def __init__(self, config: FashionBertConfig):
        super().__init__(config)
        self.bert = FashionBertModel(config)
        self.cls = FashionBertPreTrainingHeads(config)
        self.tasks = TASKS if config.contrastive_projection_dim is not None else TASKS[:3]
        # Running mean of each task's gradient norm (task_weighting="gradient"); saved, so a resumed run continues it.
        self.register_buffer("task_gradient_norm_mean", torch.zeros(len(self.tasks)))
        # Sums a tensor over the data-parallel processes (e.g. `lambda t: accelerator.reduce(t, "sum")`); None = this
        # process alone. Injected by the trainer, not saved: the model folder must not depend on torch.distributed.
        self.task_statistics_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

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
        product_ids: torch.Tensor | None = None,
        num_hard_negatives: int | torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> FashionBertForPreTrainingOutput:
        r"""
        Inputs as [`FashionBertModel.forward`], plus:
            labels (`(batch_size, text_length)`, *optional*): MLM targets, -100 where not predicted.
            alignment_labels (`(batch_size,)`, *optional*): 0 = aligned pair, 1 = not aligned. When given, MLM and
                MPM count only on aligned rows (a negative pair's text does not describe its image).
            mpm_mask (`(batch_size, num_patches)` bool, *optional*): patches masked for MPM (input zeroed, original
                feature the KL target).
            product_ids (`(batch_size,)` int64, *optional*): the product each aligned row shows; aligned rows of one
                product (several views, or one caption for several images) are never each other's contrastive or
                mined negatives. Without it, rows with the same caption count as the same product.
            num_hard_negatives (`int`, *optional*): with dual-encoder heads (`contrastive_projection_dim`) and
                `alignment_labels`, mine this many TIA negatives per aligned pair from the batch's other aligned pairs,
                as ALBEF: alternately an image for its text and a text for its image (even rows start with an image,
                odd rows with a text; 2 = one of each), each drawn with probability softmax of the contrastive
                logits over the non-matching candidates (`sample_hard_negatives`), so the most similar wrong partners
                are the likeliest. The mined rows (the text row's masked tokens, the image row's masked patches,
                `alignment_labels` 1) are appended after the batch's own rows in the joint pass; `tia_logits` and
                `mpm_logits` cover them too, and `hard_negative_pairs` says which they are.

        A task with nothing to predict in the batch (no label, no masked patch on an aligned row, no alignment
        labels) has loss 0 and weight 0; the other weights are renormalised. `loss` is None when no target is given.
        With `inputs_embeds` instead of `input_ids`, the contrastive task (`contrastive_projection_dim`) cannot run:
        it needs the token ids.
        """
        batch_size, text_length, text_device = _text_batch(input_ids, inputs_embeds)
        features = self.bert._resolve_patch_features(pixel_values, patch_features, batch_size)
        aligned = None if alignment_labels is None else alignment_labels.to(text_device) == 0
        if labels is not None:
            labels = self._mlm_targets(labels.to(text_device), (batch_size, text_length), aligned)
        has_targets = labels is not None or mpm_mask is not None or alignment_labels is not None

        # Align before fuse: the unimodal passes first, so the joint pass can take its negatives from their similarities.
        contrastive = None
        if has_targets and "itc" in self.tasks:
            if input_ids is None:
                raise ValueError(
                    "The image-text contrastive task (`contrastive_projection_dim`) needs `input_ids`: it encodes "
                    "the unmasked text alone, restored from the ids and `labels`. Pass them, not `inputs_embeds`."
                )
            contrastive = self._contrastive(input_ids, attention_mask, token_type_ids, labels, features, patch_mask, aligned, product_ids)
        hard_negative_pairs = None
        num_hard_negatives = int(num_hard_negatives or 0)
        if num_hard_negatives:
            if contrastive is None or alignment_labels is None:
                raise ValueError(
                    "`num_hard_negatives` mines TIA negatives from the contrastive similarities: it needs dual-encoder "
                    "heads (`contrastive_projection_dim`), `input_ids` and `alignment_labels`."
                )
            hard_negative_pairs = contrastive.rows[self._hard_negative_pairs(contrastive, num_hard_negatives)]
            text_rows, image_rows = hard_negative_pairs.unbind(1)
            extended = lambda tensor, rows: None if tensor is None else torch.cat([tensor, tensor[rows.to(tensor.device)]])  # noqa: E731
            input_ids = extended(input_ids, text_rows)
            attention_mask, token_type_ids = extended(attention_mask, text_rows), extended(token_type_ids, text_rows)
            features, patch_mask, mpm_mask = extended(features, image_rows), extended(patch_mask, image_rows), extended(mpm_mask, image_rows)
            num_mined = hard_negative_pairs.shape[0]
            if labels is not None:  # nothing to predict on a negative pair
                labels = torch.cat([labels, labels.new_full((num_mined, labels.shape[1]), -100)])
            alignment_labels = torch.cat([alignment_labels, alignment_labels.new_ones(num_mined)])
            aligned = torch.cat([aligned, aligned.new_zeros(num_mined)])

        outputs = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            patch_features=features,
            patch_mask=patch_mask,
            mpm_mask=mpm_mask,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        sequence_output = outputs.last_hidden_state
        text_output = sequence_output[:, :text_length]
        if labels is not None and self.config.sparse_prediction:
            predicted = labels != -100
            mlm_logits = self.cls.predictions(text_output[predicted])  # (num_predicted, vocab_size)
            mlm_targets = labels[predicted]
        else:
            mlm_logits = self.cls.predictions(text_output)
            mlm_targets = labels
        mpm_logits = self.cls.patch_predictions(sequence_output[:, text_length:])
        tia_logits = self.cls.seq_relationship(outputs.pooler_output)

        loss = mlm_loss = mpm_loss = tia_loss = itc_loss = task_weights = None
        if has_targets:
            mlm_loss, mlm_count = self._mlm_loss(mlm_logits, mlm_targets)
            mpm_loss, mpm_count = self._mpm_loss(mpm_logits, features, mpm_mask, patch_mask, aligned)
            tia_loss, tia_count = self._tia_loss(tia_logits, alignment_labels)
            task_losses = [mlm_loss, mpm_loss, tia_loss]
            counts = [mlm_count, mpm_count, tia_count]  # items each loss averages over; 0 = task absent
            shared_states = [(sequence_output,)] * 3  # what each task's head reads (for task_weighting="gradient")
            if contrastive is not None:
                itc_loss = contrastive.loss
                task_losses.append(itc_loss)
                counts.append(contrastive.rows.numel() if contrastive.rows.numel() >= 2 else 0)
                shared_states.append(contrastive.states)
            losses = torch.stack(task_losses)
            weights = self._task_weights(losses, torch.tensor(counts, device=losses.device), shared_states)
            loss = (weights * losses).sum()
            task_weights = weights.detach()

        return FashionBertForPreTrainingOutput(
            loss=loss,
            mlm_loss=mlm_loss,
            mpm_loss=mpm_loss,
            tia_loss=tia_loss,
            itc_loss=itc_loss,
            task_weights=task_weights,
            mlm_logits=mlm_logits,
            mpm_logits=mpm_logits,
            tia_logits=tia_logits,
            hard_negative_pairs=hard_negative_pairs,
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

    def _mlm_loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """MLM cross-entropy over the labelled tokens (mean), and how many there were."""
        count = 0 if labels is None else int((labels != -100).sum())
        if count == 0:
            # Also when sparse prediction left no row (`logits` empty): the head still ran, so every one of its
            # parameters gets a zero gradient (DDP would stop on the transform's otherwise).
            return _zero_loss_like(logits), 0
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return loss, count

    def _mpm_loss(
        self,
        logits: torch.Tensor,
        features: torch.Tensor,
        mpm_mask: torch.Tensor | None,
        patch_mask: torch.Tensor | None,
        aligned: torch.Tensor | None,
    ) -> tuple[torch.Tensor, int]:
        """MPM KL (eq. 2 or the code's direction) averaged over masked real patches of aligned rows, and their count."""
        if mpm_mask is None:
            return _zero_loss_like(logits), 0
        selected = mpm_mask.to(logits.device).bool()
        if patch_mask is not None:
            selected = selected & patch_mask.to(logits.device).bool()
        if aligned is not None:
            selected = selected & aligned.unsqueeze(1)
        count = int(selected.sum())
        if count == 0:
            return _zero_loss_like(logits), 0
        kl = masked_patch_kl(logits[selected], features.to(logits.device)[selected], self.config.mpm_kl_direction)
        return kl.mean(), count

    def _tia_loss(self, logits: torch.Tensor, alignment_labels: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Two-way alignment cross-entropy (class 0 = aligned, as BERT's NSP), and the number of pairs."""
        if alignment_labels is None or alignment_labels.numel() == 0:
            return _zero_loss_like(logits), 0
        return F.cross_entropy(logits.float(), alignment_labels.to(logits.device).long().reshape(-1)), alignment_labels.numel()

    def _contrastive(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        labels: torch.Tensor | None,
        features: torch.Tensor,
        patch_mask: torch.Tensor | None,
        aligned: torch.Tensor | None,
        product_ids: torch.Tensor | None,
    ) -> "_ContrastivePass":
        """
        The image-text contrastive task on the aligned rows, each modality encoded alone, from the inputs before MLM
        and MPM masking (the original token ids are restored from `labels`; MPM zeroes features only inside the
        joint pass): its loss (a zero loss below two rows: no negatives), the rows, the unimodal last hidden states
        (what its heads read), the detached text x image logits and which pairs may be each other's negatives.
        """
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        if aligned is not None:
            rows = rows[aligned]
        if rows.numel() < 2:
            none = torch.zeros(rows.numel(), rows.numel(), dtype=torch.bool, device=rows.device)
            return _ContrastivePass(_zero_loss_like(self.bert.logit_scale), rows, (), none.float(), none)
        ids = input_ids[rows]
        if labels is not None:
            original = labels[rows]  # -100 where not predicted (also where MLM was dropped for a non-aligned row)
            ids = torch.where(original != -100, original, ids)
        text_mask = torch.ones_like(ids) if attention_mask is None else attention_mask[rows].to(ids.device)
        types = None if token_type_ids is None else token_type_ids[rows]
        image_mask = torch.ones(features.shape[:2], dtype=torch.long, device=ids.device) if patch_mask is None else patch_mask
        image_mask = image_mask[rows].to(ids.device)
        text_states = self.bert.text_hidden_states(ids, text_mask, types)
        image_states = self.bert.image_hidden_states(features[rows].to(ids.device), image_mask)
        real = text_mask.bool()
        matching = ((ids[:, None] == ids[None]) & (real[:, None] == real[None])).all(-1)  # the same caption
        if product_ids is not None:
            products = product_ids.to(ids.device)[rows]
            matching = matching | (products[:, None] == products[None])
        text_embeddings = self.bert.project_text(text_states, text_mask)
        image_embeddings = self.bert.project_image(image_states, image_mask)
        loss = image_text_contrastive_loss(text_embeddings, image_embeddings, self.bert.logit_scale, matching)
        logits = self.bert.logit_scale.exp().clamp(max=100) * text_embeddings.float() @ image_embeddings.float().T
        return _ContrastivePass(loss, rows, (text_states, image_states), logits.detach(), ~matching)

    @staticmethod
    def _hard_negative_pairs(contrastive: "_ContrastivePass", num_per_pair: int) -> torch.Tensor:
        """
        `(K, 2)` (text, image) positions among the contrastive rows of the mined negatives: for aligned pair `a`,
        negative `j` (0-based) is an image for text `a` when `a + j` is even, else a text for image `a`.
        """
        num_rows = contrastive.rows.numel()
        per_direction = -(-num_per_pair // 2)
        images_for_text = sample_hard_negatives(contrastive.logits, contrastive.allowed, per_direction)
        texts_for_image = sample_hard_negatives(contrastive.logits.T, contrastive.allowed.T, per_direction)
        pairs = []
        for anchor in range(num_rows):
            taken = [0, 0]
            for j in range(num_per_pair):
                direction = (anchor + j) % 2  # 0: an image for this pair's text, 1: a text for its image
                pick = int((images_for_text if direction == 0 else texts_for_image)[anchor, taken[direction]])
                taken[direction] += 1
                if pick >= 0:
                    pairs.append((anchor, pick) if direction == 0 else (pick, anchor))
        return torch.tensor(pairs, dtype=torch.long, device=contrastive.rows.device).reshape(-1, 2)

    def _task_weights(
        self, losses: torch.Tensor, counts: torch.Tensor, shared_states: list[tuple[torch.Tensor, ...]]
    ) -> torch.Tensor:
        """`(num_tasks,)` weights: 0 for absent tasks (count 0), the rule of `config.task_weighting` for the rest."""
        norms = None
        if self.config.task_weighting == "gradient" and self.training and torch.is_grad_enabled():
            # Before the early return below: with a reducer every process must join the collective.
            norms, counts = self._task_gradient_norms(losses, counts, shared_states)
        weights = torch.zeros(len(losses), dtype=losses.dtype, device=losses.device)
        present = counts > 0
        if not present.any():
            return weights
        index = present.nonzero().flatten()
        equal = torch.full((index.numel(),), 1.0 / index.numel(), dtype=losses.dtype, device=losses.device)
        if self.config.task_weighting == "fixed":
            present_weights = equal
        elif self.config.task_weighting == "loss_softmax":
            present_weights = loss_softmax_task_weights(losses[index])
        else:
            relative = None if norms is None else self._relative_to_running_means(norms, index)
            present_weights = equal if relative is None else gradient_task_weights(relative).to(losses)
        return weights.index_put((index,), present_weights)

    def _task_gradient_norms(
        self, losses: torch.Tensor, counts: torch.Tensor, shared_states: list[tuple[torch.Tensor, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        For each task: `g_i`, the L2 norm of its loss's gradient w.r.t. the last hidden states its heads read
        (`shared_states[i]`: the joint pass for MLM, MPM and TIA; the two unimodal passes for ITC), 0 when absent; and
        the counts. With `task_statistics_reducer`, `g_i` is the norm for the global batch and the counts are summed
        over the processes.
        """
        squared_norms = torch.zeros(len(losses), dtype=torch.float64, device=losses.device)
        for task in counts.nonzero().flatten().tolist():
            task_loss, states = losses[task], [t for t in shared_states[task] if t.requires_grad]
            if task_loss.requires_grad and states:
                # Gradients w.r.t. activations, not parameters: cheap (only the heads' backward runs), nothing is
                # accumulated into .grad (DDP's hooks do not fire), and the graph is kept for the caller's backward.
                grads = torch.autograd.grad(task_loss, states, retain_graph=True, allow_unused=True)
                squared = sum(g.detach().to(torch.float64).pow(2).sum() for g in grads if g is not None)
                squared_norms[task] = torch.as_tensor(squared, dtype=torch.float64, device=losses.device)
        if self.task_statistics_reducer is None:
            return torch.nan_to_num(squared_norms.sqrt(), posinf=math.inf), counts
        counts = counts.to(torch.float64)
        # Process p's loss is a mean over its n_p items, so the global batch's loss (the mean over all N items) has
        # gradient (n_p / N) g_p w.r.t. p's states. The processes' states are disjoint, hence
        # ||g||^2 = sum_p n_p^2 ||g_p||^2 / N^2: reduce n_p^2 ||g_p||^2 and n_p, not the norms themselves.
        squared_norms = torch.nan_to_num(squared_norms, posinf=math.inf)
        totals = self.task_statistics_reducer(torch.stack([counts.square() * squared_norms, counts]))
        return totals[0].sqrt() / totals[1].clamp_min(1.0), totals[1]

    def _relative_to_running_means(self, norms: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """
        `g_i / m_i` for the present tasks `index`: each norm divided by the running mean `m_i` of that norm (updated
        here with the finite norms, momentum `config.task_gradient_momentum`; the first norm starts it, giving 1).
        """
        relative = []
        for task in index.tolist():
            norm, mean = norms[task], self.task_gradient_norm_mean[task].to(torch.float64)
            if math.isfinite(norm.item()):
                momentum = self.config.task_gradient_momentum
                updated = norm if mean <= 0 else momentum * mean + (1 - momentum) * norm
                self.task_gradient_norm_mean[task] = updated.to(self.task_gradient_norm_mean.dtype)
            relative.append(norm / mean if mean > 0 else torch.ones_like(norm))
        return torch.stack(relative)


class FashionBertForImageTextRetrieval(FashionBertPreTrainedModel):
    """
    FashionBERT as a text-image matcher: the TIA head on the pooled `[CLS]` gives the ranking score, the log-odds of
    "aligned" (`tia_logits[:, 0] - tia_logits[:, 1]`). Same `bert.*` and `cls.seq_relationship` names as
    [`FashionBertForPreTraining`], so a pretraining checkpoint loads with only the MLM/MPM heads unused (the paper
    evaluates the pretrained model directly).
    """

    # The pretraining model's training state (running means of task gradient norms) is not needed to rank.
    _keys_to_ignore_on_load_unexpected = [r"task_gradient_norm_mean"]

    def __init__(self, config: FashionBertConfig):
        super().__init__(config)
        self.bert = FashionBertModel(config)
        self.cls = FashionBertOnlyAlignmentHead(config)
        self.post_init()

    @classmethod
    def from_pretraining_model(cls, model: "FashionBertForPreTraining") -> "FashionBertForImageTextRetrieval":
        """
        The retrieval model of a pretraining model: a copy of its encoder (`bert.*`) and alignment head
        (`cls.seq_relationship`), with the same config, dtypes and device, in eval mode. The copy shares no storage
        with `model`; the MLM/MPM heads and the training state are left behind.
        """
        retrieval = cls(copy.deepcopy(model.config)).to(model.device)
        # `assign=True` keeps each source tensor's dtype (a cast model stays cast); strict loading of both
        # submodules fails loudly if anything is missing.
        for name in ("bert", "cls.seq_relationship"):
            weights = {key: value.detach().clone() for key, value in model.get_submodule(name).state_dict().items()}
            retrieval.get_submodule(name).load_state_dict(weights, strict=True, assign=True)
        return retrieval.eval()

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
        inputs_embeds: torch.Tensor | None = None,
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
            inputs_embeds=inputs_embeds,
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
