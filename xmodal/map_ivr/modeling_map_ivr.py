"""MAP-IVR: Motion-assisted Activity Proposal-based Image-to-Video Retrieval (Liu et al., AAAI 2021).

Feature disentanglement: a video's pooled proposal feature v_bar is split by two encoders into a
motion feature m^v (E_v^mo) and an appearance feature a^v (E_v^ap); an image feature u is mapped
into the same appearance space by its own encoder (E_u^ap -> a^u). Video feature reconstruction:
m^v gives a Gaussian q(z | m^v) = N(mu, sigma^2) (E_mu, E_sigma); the decoder D_v rebuilds the
video feature from [z ; a^u]. Losses: L_orth (m^v vs a^v), L_class (one classifier on the
appearance space, applied to a^v and a^u), L_KL (q vs N(0, I)) and L_re (v_bar vs v_hat).
At test time images are matched to videos in the appearance space (S_A) and in the video feature
space through h hallucinated videos D_v([z_i ; a^u]), z_i ~ N(0, I) (S_V).

Equation labels in comments refer to the seed notes' formulas (the paper's numbering is not
available): (orth) L_orth, (class) L_class, (kl) L_KL, (re) L_re, (S_A), (S_V), (S_all).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_map_ivr import MapIvrConfig


__all__ = [
    "MapIvrPreTrainedModel",
    "MapIvrModel",
    "MapIvrModelOutput",
    "MapIvrEncodedVideos",
    "MapIvrScores",
    "MapIvrScoringOptions",
    "MapIvrRanking",
    "pool_proposals",
    "orthogonality_loss",
    "kl_divergence_loss",
    "reconstruction_loss",
]

_COS_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class MapIvrModelOutput(ModelOutput):
    r"""
    Output of [`MapIvrModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            orth_loss_weight * L_orth + kl_loss_weight * L_KL + recon_loss_weight * L_re, plus
            class_loss_weight * L_class when `labels` are given.
        orth_loss (`torch.FloatTensor` of shape `()`):
            L_orth, the mean over the batch of |cos(m^v, a^v)| or cos^2 (`config.orth_loss`).
        class_loss (`torch.FloatTensor` of shape `()`, *optional*):
            L_class = CE(classifier(a^v), y) + CE(classifier(a^u), y), each averaged over the
            batch; `None` without labels.
        kl_loss (`torch.FloatTensor` of shape `()`):
            L_KL = KL(N(mu, sigma^2) || N(0, I)), summed over latent dimensions, averaged over the batch.
        recon_loss (`torch.FloatTensor` of shape `()`):
            L_re between v_bar and v_hat (`config.recon_loss`), averaged over the batch.
        image_appearance (`torch.FloatTensor` of shape `(batch_size, appearance_dim)`):
            a^u = E_u^ap(u).
        video_appearance (`torch.FloatTensor` of shape `(batch_size, appearance_dim)`):
            a^v = E_v^ap(v_bar).
        video_motion (`torch.FloatTensor` of shape `(batch_size, motion_dim)`):
            m^v = E_v^mo(v_bar).
        reconstruction (`torch.FloatTensor` of shape `(batch_size, video_feature_dim)`):
            v_hat = D_v([z ; a^u]).
        video_features (`torch.FloatTensor` of shape `(batch_size, video_feature_dim)`):
            v_bar, the (pooled) video feature the video encoders saw.
        motion_mean (`torch.FloatTensor` of shape `(batch_size, latent_dim)`):
            mu = E_mu(m^v).
        motion_logvar (`torch.FloatTensor` of shape `(batch_size, latent_dim)`):
            log sigma^2 = E_sigma(m^v) (clamped to +-`config.logvar_clamp`).
        motion_code (`torch.FloatTensor` of shape `(batch_size, latent_dim)`):
            z: mu + sigma * eps (eps ~ N(0, I)) in training mode, mu in eval mode.
        image_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Classifier logits of a^u.
        video_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Classifier logits of a^v.
    """

    loss: torch.FloatTensor | None = None
    orth_loss: torch.FloatTensor | None = None
    class_loss: torch.FloatTensor | None = None
    kl_loss: torch.FloatTensor | None = None
    recon_loss: torch.FloatTensor | None = None
    image_appearance: torch.FloatTensor | None = None
    video_appearance: torch.FloatTensor | None = None
    video_motion: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    video_features: torch.FloatTensor | None = None
    motion_mean: torch.FloatTensor | None = None
    motion_logvar: torch.FloatTensor | None = None
    motion_code: torch.FloatTensor | None = None
    image_logits: torch.FloatTensor | None = None
    video_logits: torch.FloatTensor | None = None


@dataclass
class MapIvrEncodedVideos:
    r"""
    An encoded gallery, what [`MapIvrModel.score`] needs per video (cache it to score many query
    sets without re-encoding). A plain dataclass (`len()` is the number of videos).

    Args:
        appearance (`torch.FloatTensor` of shape `(num_videos, appearance_dim)`):
            a^v / ||a^v||.
        video_features (`torch.FloatTensor` of shape `(num_videos, video_feature_dim)`):
            v_bar / ||v_bar|| (after top-k proposal pooling).
    """

    appearance: torch.FloatTensor
    video_features: torch.FloatTensor

    def __len__(self) -> int:  # number of videos, not of fields
        return self.appearance.shape[0]

    def slice(self, start: int, stop: int) -> MapIvrEncodedVideos:
        """Videos ``start:stop`` as a new `MapIvrEncodedVideos`."""
        return MapIvrEncodedVideos(
            appearance=self.appearance[start:stop], video_features=self.video_features[start:stop]
        )

    def to(self, *args, **kwargs) -> MapIvrEncodedVideos:
        """Both tensors through `torch.Tensor.to` (device and/or dtype)."""
        return MapIvrEncodedVideos(
            appearance=self.appearance.to(*args, **kwargs), video_features=self.video_features.to(*args, **kwargs)
        )


class MapIvrScoringOptions(TypedDict, total=False):
    r"""
    Options of [`MapIvrModel.score`] and [`MapIvrModel.rank`], all optional.

    Args:
        num_samples (`int`): h, the motion codes sampled per query (default `config.num_samples`).
        generator (`torch.Generator`): generator of the codes (deterministic scores when seeded).
        proposal_scores, proposal_mask: for a gallery of proposal bags, as in [`MapIvrModel.forward`].
        chunk_size (`int`): gallery videos per chunk (default `config.score_chunk_size`).
        motion_codes (`torch.FloatTensor` of shape `(num_queries, h, latent_dim)`): explicit codes instead of sampling.
    """

    num_samples: int | None
    generator: torch.Generator | None
    proposal_scores: Any
    proposal_mask: Any
    chunk_size: int | None
    motion_codes: torch.Tensor | None


@dataclass
class MapIvrScores(ModelOutput):
    r"""
    Query-to-gallery distances (lower = closer), on the CPU.

    Args:
        s_a (`torch.FloatTensor` of shape `(num_queries, num_videos)`):
            S_A = 1 - cos(a^u, a^v).
        s_v (`torch.FloatTensor` of shape `(num_queries, num_videos)`):
            S_V = min_i (1 - cos(v_bar, D_v([z_i ; a^u]))), z_i ~ N(0, I), i = 1..h.
        s_all (`torch.FloatTensor` of shape `(num_queries, num_videos)`):
            S_all = (1 - lambda_v) * S_A + lambda_v * S_V.
    """

    s_a: torch.FloatTensor | None = None
    s_v: torch.FloatTensor | None = None
    s_all: torch.FloatTensor | None = None


@dataclass
class MapIvrRanking(ModelOutput):
    r"""
    Top-k gallery videos per query, closest first (ties broken by the lower gallery index), on the CPU.

    Args:
        indices (`torch.LongTensor` of shape `(num_queries, k)`):
            Gallery indices.
        distances (`torch.FloatTensor` of shape `(num_queries, k)`):
            Their distances under the chosen score (`"s_all"`, `"s_a"` or `"s_v"`).
    """

    indices: torch.LongTensor | None = None
    distances: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------
# Pooling and losses (plain functions, so tests and users can call them directly)
# ----------------------------------------------------------------------------------------------


def pool_proposals(
    video_features: torch.Tensor,
    proposal_scores: torch.Tensor | None = None,
    proposal_mask: torch.Tensor | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """Pool a bag of proposal features into the video feature v_bar.

    * ``video_features`` of shape ``(B, D)`` is already v_bar and is returned unchanged.
    * ``(B, K, D)`` bags: a proposal's confidence is its score when ``proposal_scores`` is
      ``(B, K)``, or its highest class score when ``(B, K, C)`` (as R-C3D's proposals). The
      ``top_k`` most confident valid proposals are averaged (all valid ones when a video has
      fewer; ties keep the earlier proposal). Without scores (or with ``top_k=None``) every valid
      proposal is averaged. ``proposal_mask`` ``(B, K)`` marks real proposals (default: all).
    """
    if video_features.dim() == 2:
        if proposal_scores is not None or proposal_mask is not None:
            raise ValueError("proposal_scores / proposal_mask only apply to proposal bags of shape (B, K, D)")
        return video_features
    if video_features.dim() != 3:
        raise ValueError(f"video_features must be (B, D) or (B, K, D), got shape {tuple(video_features.shape)}")
    batch, num_proposals, _ = video_features.shape
    if proposal_mask is None:
        mask = torch.ones(batch, num_proposals, dtype=torch.bool, device=video_features.device)
    else:
        if tuple(proposal_mask.shape) != (batch, num_proposals):
            raise ValueError(
                f"proposal_mask must have shape {(batch, num_proposals)}, got {tuple(proposal_mask.shape)}"
            )
        mask = proposal_mask.to(device=video_features.device, dtype=torch.bool)
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"video(s) {empty.tolist()} have no valid proposal in proposal_mask")
    keep = mask
    if proposal_scores is not None and top_k is not None:
        if proposal_scores.dim() == 3:
            confidence = proposal_scores.amax(dim=-1)  # a proposal's highest class score
        else:
            confidence = proposal_scores
        if tuple(confidence.shape) != (batch, num_proposals):
            raise ValueError(
                f"proposal_scores must be (B, K) or (B, K, C) with (B, K) = {(batch, num_proposals)}, "
                f"got {tuple(proposal_scores.shape)}"
            )
        confidence = confidence.to(video_features.device).float().masked_fill(~mask, float("-inf"))
        order = torch.sort(confidence, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(num_proposals, device=order.device).expand(batch, -1))
        keep = mask & (rank < top_k)
    weight = keep.to(video_features.dtype).unsqueeze(-1)
    return (video_features * weight).sum(dim=1) / weight.sum(dim=1)


def orthogonality_loss(motion: torch.Tensor, appearance: torch.Tensor, form: str = "abs") -> torch.Tensor:
    """(orth) L_orth: mean over the batch of |cos(m^v, a^v)| (``"abs"``) or cos^2 (``"squared"``)."""
    cosine = F.cosine_similarity(motion, appearance, dim=-1, eps=_COS_EPS)
    if form == "abs":
        return cosine.abs().mean()
    if form == "squared":
        return cosine.pow(2).mean()
    raise ValueError(f"orth_loss form must be 'abs' or 'squared', got {form!r}")


def kl_divergence_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(kl) L_KL = KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2), batch mean."""
    return (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)).mean()


def reconstruction_loss(target: torch.Tensor, reconstruction: torch.Tensor, form: str = "cosine") -> torch.Tensor:
    """(re) L_re: ``"cosine"``: mean of 1 - cos(v_bar, v_hat); ``"mse"``: mean squared error over all elements."""
    if form == "cosine":
        return (1.0 - F.cosine_similarity(target, reconstruction, dim=-1, eps=_COS_EPS)).mean()
    if form == "mse":
        return F.mse_loss(reconstruction, target)
    raise ValueError(f"recon_loss form must be 'mse' or 'cosine', got {form!r}")


def _combined_score(s_a: torch.Tensor, s_v: torch.Tensor, lambda_v: float) -> torch.Tensor:
    """(S_all) = (1 - lambda_v) * S_A + lambda_v * S_V."""
    return (1.0 - lambda_v) * s_a + lambda_v * s_v


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class MapIvrMLP(nn.Module):
    """Linear -> activation -> dropout for each hidden size, then a final linear layer."""

    def __init__(self, in_features: int, hidden_sizes: list[int], out_features: int, config: MapIvrConfig):
        super().__init__()
        sizes = [in_features, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(sizes[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = self.dropout(self.activation(layer(x)))
        return self.output(x)


class MapIvrPreTrainedModel(PreTrainedModel):
    config_class = MapIvrConfig
    base_model_prefix = "map_ivr"
    main_input_name = "image_features"
    input_modalities = ("image", "video")

    # Three shallow MLPs and no layer stack: nothing worth recomputing, so transformers' own
    # `activation_checkpointing_enable()` refuses it with its error.
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)


def _reject_unknown_kwargs(kwargs: dict) -> None:
    """Raise a TypeError naming any keyword that is not one of transformers' common flags (`TransformersKwargs`)."""
    unknown = sorted(set(kwargs) - set(TransformersKwargs.__annotations__))
    if unknown:
        raise TypeError(f"MapIvrModel.forward() got unexpected keyword argument(s): {', '.join(unknown)}")


def _as_tensor(value: Any, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    try:
        return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor or array, got {type(value).__name__}") from err


class MapIvrModel(MapIvrPreTrainedModel):
    """MAP-IVR: the disentangling encoders, the motion VAE, the decoder, the appearance classifier,
    and the test-time scoring (`encode_images`, `encode_videos`, `score`, `rank`).

    Module names map to the figure: `image_appearance_encoder` = E_u^ap,
    `video_appearance_encoder` = E_v^ap, `video_motion_encoder` = E_v^mo, `motion_mean` = E_mu,
    `motion_logvar` = E_sigma (it predicts log sigma^2), `video_decoder` = D_v, `classifier` = the
    appearance-space classifier shared by a^v and a^u.
    """

    def __init__(self, config: MapIvrConfig):
        super().__init__(config)
        self.image_appearance_encoder = MapIvrMLP(
            config.image_feature_dim, config.encoder_hidden_sizes, config.appearance_dim, config
        )
        self.video_appearance_encoder = MapIvrMLP(
            config.video_feature_dim, config.encoder_hidden_sizes, config.appearance_dim, config
        )
        self.video_motion_encoder = MapIvrMLP(
            config.video_feature_dim, config.encoder_hidden_sizes, config.motion_dim, config
        )
        self.motion_mean = nn.Linear(config.motion_dim, config.latent_dim)
        self.motion_logvar = nn.Linear(config.motion_dim, config.latent_dim)
        self.video_decoder = MapIvrMLP(
            config.latent_dim + config.appearance_dim, config.decoder_hidden_sizes, config.video_feature_dim, config
        )
        self.classifier = nn.Linear(config.appearance_dim, config.num_labels)
        self.post_init()

    # ---- building blocks ----

    def _check_features(self, features: torch.Tensor, name: str, dim: int, bag_ok: bool) -> None:
        ok_dims = (2, 3) if bag_ok else (2,)
        if features.dim() not in ok_dims or features.shape[-1] != dim:
            shape = "(B, D) or (B, K, D)" if bag_ok else "(B, D)"
            raise ValueError(f"{name} must have shape {shape} with D = {dim}, got {tuple(features.shape)}")

    def pool_video_features(
        self,
        video_features: torch.Tensor,
        proposal_scores: torch.Tensor | None = None,
        proposal_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v_bar from a vector or a proposal bag (top `config.proposal_top_k` by confidence); see `pool_proposals`."""
        self._check_features(video_features, "video_features", self.config.video_feature_dim, bag_ok=True)
        return pool_proposals(video_features, proposal_scores, proposal_mask, top_k=self.config.proposal_top_k)

    def motion_distribution(self, video_motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z | m^v)."""
        clamp = self.config.logvar_clamp
        return self.motion_mean(video_motion), self.motion_logvar(video_motion).clamp(-clamp, clamp)

    def decode(self, motion_code: torch.Tensor, image_appearance: torch.Tensor) -> torch.Tensor:
        """v_hat = D_v([z ; a^u]) (z first, as in the figure). Leading dimensions broadcast."""
        shape = torch.broadcast_shapes(motion_code.shape[:-1], image_appearance.shape[:-1])
        motion_code = motion_code.expand(*shape, motion_code.shape[-1])
        image_appearance = image_appearance.expand(*shape, image_appearance.shape[-1])
        return self.video_decoder(torch.cat([motion_code, image_appearance], dim=-1))

    # ---- training forward ----

    @can_return_tuple
    def forward(
        self,
        image_features: torch.Tensor,
        video_features: torch.Tensor,
        labels: torch.Tensor | None = None,
        proposal_scores: torch.Tensor | None = None,
        proposal_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MapIvrModelOutput:
        r"""
        Args:
            image_features (`torch.FloatTensor` of shape `(batch_size, image_feature_dim)`):
                Image features u. Row i is paired with video i (same activity class in training).
            video_features (`torch.FloatTensor` of shape `(batch_size, video_feature_dim)` or `(batch_size, num_proposals, video_feature_dim)`):
                v_bar, or proposal bags pooled by `pool_proposals` (top `config.proposal_top_k`).
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Activity classes; enable L_class.
            proposal_scores (`torch.FloatTensor` of shape `(batch_size, num_proposals)` or `(batch_size, num_proposals, num_classes)`, *optional*):
                Proposal confidences, or class scores whose maximum is the confidence.
            proposal_mask (`torch.BoolTensor` of shape `(batch_size, num_proposals)`, *optional*):
                True for real proposals, False for padding.
            return_dict (`bool`, *optional*):
                Return a `MapIvrModelOutput` (default `config.return_dict`) or a tuple.
            kwargs: transformers' common flags (`TransformersKwargs`); MAP-IVR has no attentions or hidden states
                to return, and any other name (a typo such as `label`) raises a `TypeError`.

        The motion code is z = mu + sigma * eps with eps ~ N(0, I) in training mode
        (reparameterisation, so gradients reach E_mu and E_sigma) and z = mu in eval mode
        (deterministic outputs). The returned loss always includes L_orth, L_KL and L_re (they need
        no labels) and adds L_class when `labels` are given.
        """
        _reject_unknown_kwargs(kwargs)
        self._check_features(image_features, "image_features", self.config.image_feature_dim, bag_ok=False)
        video_bar = self.pool_video_features(video_features, proposal_scores, proposal_mask)
        if video_bar.shape[0] != image_features.shape[0]:
            raise ValueError(
                f"image_features ({image_features.shape[0]} rows) and video_features ({video_bar.shape[0]} rows) "
                "must have the same batch size"
            )

        image_appearance = self.image_appearance_encoder(image_features)  # a^u
        video_appearance = self.video_appearance_encoder(video_bar)  # a^v
        video_motion = self.video_motion_encoder(video_bar)  # m^v
        mean, logvar = self.motion_distribution(video_motion)
        if self.training:
            motion_code = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)  # reparameterisation
        else:
            motion_code = mean
        reconstruction = self.decode(motion_code, image_appearance)  # v_hat
        image_logits = self.classifier(image_appearance)
        video_logits = self.classifier(video_appearance)

        config = self.config
        orth = orthogonality_loss(video_motion, video_appearance, config.orth_loss)  # (orth)
        kl = kl_divergence_loss(mean, logvar)  # (kl)
        recon = reconstruction_loss(video_bar, reconstruction, config.recon_loss)  # (re)
        loss = config.orth_loss_weight * orth + config.kl_loss_weight * kl + config.recon_loss_weight * recon
        class_loss = None
        if labels is not None:
            labels = labels.to(video_logits.device).long()
            if tuple(labels.shape) != (video_bar.shape[0],):
                raise ValueError(f"labels must have shape ({video_bar.shape[0]},), got {tuple(labels.shape)}")
            # (class) -log p(a^v)_y - log p(a^u)_y
            class_loss = F.cross_entropy(video_logits, labels) + F.cross_entropy(image_logits, labels)
            loss = loss + config.class_loss_weight * class_loss

        return MapIvrModelOutput(
            loss=loss,
            orth_loss=orth,
            class_loss=class_loss,
            kl_loss=kl,
            recon_loss=recon,
            image_appearance=image_appearance,
            video_appearance=video_appearance,
            video_motion=video_motion,
            reconstruction=reconstruction,
            video_features=video_bar,
            motion_mean=mean,
            motion_logvar=logvar,
            motion_code=motion_code,
            image_logits=image_logits,
            video_logits=video_logits,
        )

    # ---- retrieval ----

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode and no_grad for the duration, restoring the previous training flag."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def encode_images(self, image_features: Any, chunk_size: int | None = None) -> torch.Tensor:
        """a^u = E_u^ap(u) in eval mode (not normalised: D_v needs it as is).

        Args:
            image_features: ``(Q, image_feature_dim)`` tensor or array.
            chunk_size: rows per forward pass (default `config.score_chunk_size`).

        Returns:
            ``(Q, appearance_dim)`` on the model's device.
        """
        chunk_size = chunk_size or self.config.score_chunk_size
        parts = []
        with self._inference():
            for start in range(0, len(image_features), chunk_size):
                rows = _as_tensor(image_features[start : start + chunk_size], "image_features", self.dtype, self.device)
                self._check_features(rows, "image_features", self.config.image_feature_dim, bag_ok=False)
                parts.append(self.image_appearance_encoder(rows))
        if not parts:
            return torch.zeros(0, self.config.appearance_dim, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def _encode_video_rows(self, video_features, proposal_scores, proposal_mask, start: int, stop: int):
        rows = _as_tensor(video_features[start:stop], "video_features", self.dtype, self.device)
        scores = None
        if proposal_scores is not None:
            scores = _as_tensor(proposal_scores[start:stop], "proposal_scores", torch.float32, self.device)
        mask = None
        if proposal_mask is not None:
            mask = _as_tensor(proposal_mask[start:stop], "proposal_mask", torch.bool, self.device)
        video_bar = self.pool_video_features(rows, scores, mask)
        appearance = self.video_appearance_encoder(video_bar)
        return MapIvrEncodedVideos(
            appearance=F.normalize(appearance, dim=-1, eps=_COS_EPS),
            video_features=F.normalize(video_bar, dim=-1, eps=_COS_EPS),
        )

    def encode_videos(
        self,
        video_features: Any,
        proposal_scores: Any = None,
        proposal_mask: Any = None,
        chunk_size: int | None = None,
    ) -> MapIvrEncodedVideos:
        """Encode a gallery once: L2-normalised a^v and L2-normalised v_bar (eval mode, no grad).

        Args:
            video_features: ``(N, D)`` v_bar or ``(N, K, D)`` proposal bags (tensor or array; a
                numpy memmap is read chunk by chunk).
            proposal_scores, proposal_mask: as in `forward`.
            chunk_size: videos per forward pass (default `config.score_chunk_size`).
        """
        chunk_size = chunk_size or self.config.score_chunk_size
        parts = []
        with self._inference():
            for start in range(0, len(video_features), chunk_size):
                parts.append(
                    self._encode_video_rows(video_features, proposal_scores, proposal_mask, start, start + chunk_size)
                )
        if not parts:
            return MapIvrEncodedVideos(
                appearance=torch.zeros(0, self.config.appearance_dim, dtype=self.dtype, device=self.device),
                video_features=torch.zeros(0, self.config.video_feature_dim, dtype=self.dtype, device=self.device),
            )
        return MapIvrEncodedVideos(
            appearance=torch.cat([p.appearance for p in parts]),
            video_features=torch.cat([p.video_features for p in parts]),
        )

    def sample_motion_codes(
        self, num_queries: int, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z_i ~ N(0, I): ``(num_queries, num_samples, latent_dim)``, drawn in one call (on the
        generator's device when one is given) so a seeded generator gives the same codes anywhere."""
        device = generator.device if generator is not None else self.device
        codes = torch.randn(
            num_queries, num_samples, self.config.latent_dim, generator=generator, device=device, dtype=torch.float32
        )
        return codes.to(device=self.device, dtype=self.dtype)

    def hallucinate_videos(
        self, image_appearance: torch.Tensor, motion_codes: torch.Tensor, chunk_size: int | None = None
    ) -> torch.Tensor:
        """L2-normalised v_hat_i = D_v([z_i ; a^u]) for every query and code: ``(Q, h, video_feature_dim)``.

        Computed once per query (not per query-video pair), in query chunks.
        """
        chunk_size = chunk_size or self.config.score_chunk_size
        num_samples = motion_codes.shape[1]
        block = max(1, chunk_size // num_samples)
        parts = []
        with self._inference():
            for start in range(0, image_appearance.shape[0], block):
                appearance = image_appearance[start : start + block].unsqueeze(1)  # (q, 1, A)
                decoded = self.decode(motion_codes[start : start + block], appearance)  # (q, h, D)
                parts.append(F.normalize(decoded, dim=-1, eps=_COS_EPS))
        if not parts:
            return torch.zeros(0, num_samples, self.config.video_feature_dim, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def _score_chunks(
        self,
        image_features: Any,
        video_features: Any,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        proposal_scores: Any = None,
        proposal_mask: Any = None,
        chunk_size: int | None = None,
        motion_codes: torch.Tensor | None = None,
    ):
        """Yield ``(start, stop, s_a, s_v)`` for consecutive gallery chunks (CPU tensors ``(Q, stop - start)``)."""
        config = self.config
        chunk_size = chunk_size or config.score_chunk_size
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        image_appearance = self.encode_images(image_features, chunk_size)  # a^u, (Q, A)
        num_queries = image_appearance.shape[0]
        if motion_codes is None:
            num_samples = num_samples or config.num_samples
            if num_samples < 1:
                raise ValueError(f"num_samples must be >= 1, got {num_samples}")
            motion_codes = self.sample_motion_codes(num_queries, num_samples, generator)
        else:
            motion_codes = motion_codes.to(device=self.device, dtype=self.dtype)
            if motion_codes.dim() != 3 or motion_codes.shape[0] != num_queries or motion_codes.shape[2] != config.latent_dim:
                raise ValueError(
                    f"motion_codes must have shape ({num_queries}, h, {config.latent_dim}), got {tuple(motion_codes.shape)}"
                )
            num_samples = motion_codes.shape[1]
        hallucinated = self.hallucinate_videos(image_appearance, motion_codes, chunk_size)  # (Q, h, D)
        appearance_unit = F.normalize(image_appearance, dim=-1, eps=_COS_EPS)
        flat = hallucinated.reshape(num_queries * num_samples, -1)
        block = max(1, chunk_size // num_samples)  # queries per block: (block * h, chunk) intermediates

        encoded = isinstance(video_features, MapIvrEncodedVideos)
        if encoded and (proposal_scores is not None or proposal_mask is not None):
            raise ValueError("proposal_scores / proposal_mask cannot be combined with an encoded gallery")
        num_videos = len(video_features)
        with self._inference():
            for start in range(0, num_videos, chunk_size):
                stop = min(start + chunk_size, num_videos)
                if encoded:
                    gallery = video_features.slice(start, stop).to(device=self.device, dtype=self.dtype)
                else:
                    gallery = self._encode_video_rows(video_features, proposal_scores, proposal_mask, start, stop)
                # The encoders may run under bf16 autocast; the distances are float32 products of the unit vectors,
                # since 1 - cos near 0 needs more than bf16's 8 bits to rank close videos apart.
                with torch.autocast(self.device.type, enabled=False):
                    s_a = 1.0 - appearance_unit.float() @ gallery.appearance.float().T  # (S_A)
                    s_v = torch.empty(num_queries, stop - start, dtype=s_a.dtype, device=s_a.device)
                    for q in range(0, num_queries, block):
                        q_stop = min(q + block, num_queries)
                        cosine = flat[q * num_samples : q_stop * num_samples].float() @ gallery.video_features.float().T
                        # (S_V) min_i (1 - cos) = 1 - max_i cos over the h hallucinated videos
                        s_v[q:q_stop] = 1.0 - cosine.view(q_stop - q, num_samples, -1).amax(dim=1)
                yield start, stop, s_a.float().cpu(), s_v.float().cpu()

    def _lambda_v(self, lambda_v: float | None) -> float:
        """The weight of S_V: `lambda_v`, or `config.lambda_v` when None; must be in [0, 1]."""
        lambda_v = self.config.lambda_v if lambda_v is None else lambda_v
        if not 0.0 <= lambda_v <= 1.0:
            raise ValueError(f"lambda_v must be in [0, 1], got {lambda_v}")
        return lambda_v

    def score(
        self,
        image_features: Any,
        video_features: Any,
        lambda_v: float | None = None,
        **options: Unpack[MapIvrScoringOptions],
    ) -> MapIvrScores:
        """Distances between image queries and a video gallery (lower = closer), as in the seed:

        * S_A = 1 - cos(a^u, a^v)
        * S_V = min_{i=1..h} (1 - cos(v_bar, D_v([z_i ; a^u]))), z_i ~ N(0, I)
        * S_all = (1 - lambda_v) * S_A + lambda_v * S_V

        The h codes of a query are drawn once (``(Q, h, latent_dim)`` in one call to
        ``torch.randn`` with ``generator``), decoded once, and compared with every video by matrix
        products. The gallery is processed in chunks of ``chunk_size`` videos (queries in blocks
        of ``chunk_size // h``), so intermediates stay near ``chunk_size**2`` floats; only the
        ``(Q, N)`` results grow with the gallery. Runs in eval mode under ``torch.no_grad``.

        Args:
            image_features: ``(Q, image_feature_dim)`` query image features.
            video_features: ``(N, D)`` or ``(N, K, D)`` gallery features (tensor or array, read
                chunk by chunk), or a `MapIvrEncodedVideos` from `encode_videos` (no re-encoding).
            lambda_v: weight of S_V (default `config.lambda_v`).
            options: `MapIvrScoringOptions` (sampling, proposal bags, chunking); an unknown name raises a TypeError.

        Returns:
            `MapIvrScores` with ``s_a``, ``s_v``, ``s_all`` of shape ``(Q, N)`` (float32, CPU).
        """
        lambda_v = self._lambda_v(lambda_v)
        num_queries, num_videos = len(image_features), len(video_features)
        s_a = torch.empty(num_queries, num_videos, dtype=torch.float32)
        s_v = torch.empty(num_queries, num_videos, dtype=torch.float32)
        for start, stop, a, v in self._score_chunks(image_features, video_features, **options):
            s_a[:, start:stop] = a
            s_v[:, start:stop] = v
        return MapIvrScores(s_a=s_a, s_v=s_v, s_all=_combined_score(s_a, s_v, lambda_v))

    def rank(
        self,
        image_features: Any,
        video_features: Any,
        top_k: int = 100,
        by: str = "s_all",
        lambda_v: float | None = None,
        **options: Unpack[MapIvrScoringOptions],
    ) -> MapIvrRanking:
        """The ``top_k`` closest gallery videos per query under ``by`` (``"s_all"``, ``"s_a"`` or
        ``"s_v"``), merged chunk by chunk so the full ``(Q, N)`` matrix is never held. Same
        arguments and codes as `score` (the same generator state gives the same distances);
        ties go to the lower gallery index.

        Returns:
            `MapIvrRanking` with ``indices`` ``(Q, min(top_k, N))`` and their ``distances``.
        """
        if by not in ("s_all", "s_a", "s_v"):
            raise ValueError(f"by must be 's_all', 's_a' or 's_v', got {by!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        lambda_v = self._lambda_v(lambda_v)
        num_queries = len(image_features)
        best_distances = torch.zeros(num_queries, 0)
        best_indices = torch.zeros(num_queries, 0, dtype=torch.long)
        for start, stop, s_a, s_v in self._score_chunks(image_features, video_features, **options):
            distances = {"s_a": s_a, "s_v": s_v, "s_all": _combined_score(s_a, s_v, lambda_v)}[by]
            indices = torch.arange(start, stop).expand(num_queries, -1)
            # Earlier (lower-index) candidates come first, so a stable sort breaks ties by index.
            merged = torch.cat([best_distances, distances], dim=1)
            merged_indices = torch.cat([best_indices, indices], dim=1)
            order = torch.sort(merged, dim=1, stable=True).indices[:, :top_k]
            best_distances = merged.gather(1, order)
            best_indices = merged_indices.gather(1, order)
        return MapIvrRanking(indices=best_indices, distances=best_distances)
