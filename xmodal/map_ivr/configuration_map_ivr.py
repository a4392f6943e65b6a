"""MAP-IVR model configuration."""

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


__all__ = ["MapIvrConfig"]

# Ceilings on sizes, far above any real setting (APIVR: 4096-d features, 18 classes, h = 10): a malicious or corrupt
# config.json is refused before a model allocates its weights or `score` its h-expanded intermediates.
MAX_FIELD_VALUES = {
    "image_feature_dim": 2**20,
    "video_feature_dim": 2**20,
    "appearance_dim": 2**16,
    "motion_dim": 2**16,
    "latent_dim": 2**16,
    "proposal_top_k": 2**16,
    "num_samples": 2**16,
    "score_chunk_size": 2**16,
    "num_labels": 2**20,
}
MAX_HIDDEN_LAYERS = 64  # entries of `encoder_hidden_sizes` / `decoder_hidden_sizes`, each at most 2**16 wide
MAX_PARAMETERS = 2**36  # about 69 billion parameters (275 GB in float32)

# Fields derived from another when None: an override of the source in `from_pretrained(path, **overrides)` derives
# them again (see `MapIvrConfig.from_dict`).
DERIVED_FIELDS = {"motion_dim": "appearance_dim"}


@strict
class MapIvrConfig(PreTrainedConfig):
    r"""
    Configuration of [`MapIvrModel`], the Motion-assisted Activity Proposal-based Image-to-Video
    Retrieval model (Liu et al., AAAI 2021).

    What comes from the sources (seed notes and the paper's model figure): the modules (E_u^ap,
    E_v^ap, E_v^mo, E_mu, E_sigma, D_v, one classifier on the appearance space), the four losses
    (L_orth on (m^v, a^v), L_class = CE(a^v) + CE(a^u), L_KL against N(0, I), L_re between v_bar
    and v_hat), top-k proposal averaging by confidence, and the test-time scores S_A, S_V (h
    sampled codes) and S_all = (1 - lambda_v) S_A + lambda_v S_V. The 4096-d video features and
    18 classes are those of the APIVR THUMOS14 release (its image features are 128-d; the
    figure's VGG-16 fc7 gives 4096-d). Everything else (layer sizes, activation, dropout, loss
    forms and weights, h, lambda_v, top-k) is a **default of this project**: the paper's text
    is not available, so these are configurable and swept by the benchmarks.

    Invalid values raise one ValueError at construction, naming every bad field: wrong types (strict dataclass
    validation), values out of range, sizes above `MAX_FIELD_VALUES` / `MAX_HIDDEN_LAYERS`, and
    sizes that together make a model of more than `MAX_PARAMETERS` parameters, so a malicious
    `config.json` is refused before any weight is allocated. Overrides at load time
    (`from_pretrained(path, appearance_dim=256)`) are applied before construction, so the derived
    `motion_dim` follows them.

    Args:
        image_feature_dim (`int`, defaults to 4096):
            Size of the image feature u (VGG-16 fc7 in the paper).
        video_feature_dim (`int`, defaults to 4096):
            Size of a proposal feature and of v_bar (R-C3D proposal features in the paper).
        appearance_dim (`int`, defaults to 512):
            Size of the shared appearance space (a^u, a^v). Project default.
        motion_dim (`int`, *optional*):
            Size of the motion feature m^v. Must equal `appearance_dim`, since L_orth compares
            m^v and a^v with a cosine; `None` (the default) derives it from `appearance_dim`.
        latent_dim (`int`, defaults to 64):
            Size of the motion uncertainty code z. Project default.
        encoder_hidden_sizes (`list[int]`, defaults to `(1024,)`):
            Hidden layer sizes of each of the three encoders E_u^ap, E_v^ap, E_v^mo (an empty
            list makes them linear maps). Project default.
        decoder_hidden_sizes (`list[int]`, defaults to `(1024,)`):
            Hidden layer sizes of the decoder D_v. Project default.
        hidden_act (`str`, defaults to `"relu"`):
            Activation of the hidden layers (any key of `transformers.activations.ACT2FN`).
        dropout (`float`, defaults to 0.1):
            Dropout after each hidden activation (training only). Project default.
        proposal_top_k (`int`, defaults to 5):
            Proposals kept per video (by confidence) before averaging into v_bar, when proposal
            scores are given. Project default (the paper's k is not known).
        orth_loss (`str`, defaults to `"abs"`):
            Form of L_orth: `"abs"` = |cos(m^v, a^v)| or `"squared"` = cos^2(m^v, a^v). The seed
            writes L_orth = cos(m^v, a^v), but minimising a plain cosine drives it to -1
            (anti-parallel features), not to orthogonality; both forms have their minimum at 0.
            `"abs"` is the default because it keeps a constant pull towards 0 (cos^2's gradient
            vanishes near 0, so it tolerates small residual correlations).
        recon_loss (`str`, defaults to `"cosine"`):
            Form of L_re: `"cosine"` = 1 - cos(v_bar, v_hat) (the distance S_V uses at test time,
            hence the default) or `"mse"` = mean squared error over feature dimensions.
        orth_loss_weight (`float`, defaults to 1.0):
            Weight of L_orth in the total loss. Project default.
        class_loss_weight (`float`, defaults to 1.0):
            Weight of L_class. Project default.
        kl_loss_weight (`float`, defaults to 0.1):
            Weight of L_KL. Project default.
        recon_loss_weight (`float`, defaults to 1.0):
            Weight of L_re. Project default.
        num_samples (`int`, defaults to 10):
            h, the number of motion codes z_i ~ N(0, I) sampled per query for S_V. Project default.
        lambda_v (`float`, defaults to 0.5):
            Weight of S_V in S_all = (1 - lambda_v) S_A + lambda_v S_V, in [0, 1]. Project default.
        score_chunk_size (`int`, defaults to 4096):
            Gallery videos per chunk in `score`/`rank`; the h-expanded intermediates hold about
            `score_chunk_size ** 2` floats, so memory stays bounded for any gallery size.
        logvar_clamp (`float`, defaults to 10.0):
            E_sigma's log-variance is clamped to [-logvar_clamp, logvar_clamp] for numerical
            stability of exp(). Project default.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear weights.
        num_labels (`int`, defaults to 18):
            Number of activity classes of the classifier (18 in the APIVR THUMOS14 release).

    Example:

    ```python
    >>> from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
    >>> config = MapIvrConfig(image_feature_dim=128, video_feature_dim=4096, num_labels=18)
    ```
    """

    model_type = "map_ivr"

    image_feature_dim: int = 4096
    video_feature_dim: int = 4096
    appearance_dim: int = 512
    motion_dim: int | None = None
    latent_dim: int = 64
    encoder_hidden_sizes: list[int] | tuple[int, ...] = (1024,)
    decoder_hidden_sizes: list[int] | tuple[int, ...] = (1024,)
    hidden_act: str = "relu"
    dropout: float | int = 0.1
    proposal_top_k: int = 5
    orth_loss: str = "abs"
    recon_loss: str = "cosine"
    orth_loss_weight: float | int = 1.0
    class_loss_weight: float | int = 1.0
    kl_loss_weight: float | int = 0.1
    recon_loss_weight: float | int = 1.0
    num_samples: int = 10
    lambda_v: float | int = 0.5
    score_chunk_size: int = 4096
    logvar_clamp: float | int = 10.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # `num_labels` is a property of PreTrainedConfig backed by id2label (see BartConfig).
        if self.id2label is None:
            self.num_labels = kwargs.pop("num_labels", 18)
        if self.motion_dim is None:
            self.motion_dim = self.appearance_dim
        self.encoder_hidden_sizes = list(self.encoder_hidden_sizes)
        self.decoder_hidden_sizes = list(self.decoder_hidden_sizes)
        super().__post_init__(**kwargs)
        self.validate_map_ivr_values()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "MapIvrConfig":
        """
        As `PreTrainedConfig.from_dict` (so also `from_pretrained(path, **kwargs)`), but field overrides in `kwargs`
        are applied before construction, so derivation and validation run once, on the final values (the base class
        sets them afterwards, one attribute at a time). `motion_dim` follows an overridden `appearance_dim` unless it
        is overridden too; `num_labels` keeps the base class's handling (it rebuilds `id2label`).
        """
        overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in _OWN_FIELDS}
        config_dict = {**config_dict, **overrides}
        for name, source in DERIVED_FIELDS.items():
            if source in overrides and name not in overrides:
                config_dict[name] = None
        return super().from_dict(config_dict, **kwargs)

    def validate_map_ivr_values(self) -> None:
        """Part of `@strict` validation (also run at save time): one ValueError naming every bad field."""
        errors = self._size_errors()
        if not errors:  # the checks below assume sane sizes
            errors = self._value_errors()
        if errors:
            raise ValueError("\n".join(errors))

    def _value_errors(self) -> list[str]:
        from transformers.activations import ACT2FN

        errors = []
        for name in (
            "image_feature_dim",
            "video_feature_dim",
            "appearance_dim",
            "motion_dim",
            "latent_dim",
            "proposal_top_k",
            "num_samples",
            "score_chunk_size",
        ):
            value = getattr(self, name)
            if value < 1:
                errors.append(f"`{name}` must be >= 1, got {value}")
        for name in ("encoder_hidden_sizes", "decoder_hidden_sizes"):
            sizes = getattr(self, name)
            if any(size < 1 for size in sizes):
                errors.append(f"`{name}` must contain sizes >= 1, got {list(sizes)}")
        if self.motion_dim != self.appearance_dim:
            errors.append(
                f"`motion_dim` ({self.motion_dim}) must equal `appearance_dim` ({self.appearance_dim}): "
                "L_orth takes the cosine between m^v and a^v"
            )
        if self.num_labels is None or self.num_labels < 1:
            errors.append(f"`num_labels` must be >= 1, got {self.num_labels}")
        if self.orth_loss not in ("abs", "squared"):
            errors.append(f"`orth_loss` must be 'abs' or 'squared', got {self.orth_loss!r}")
        if self.recon_loss not in ("mse", "cosine"):
            errors.append(f"`recon_loss` must be 'mse' or 'cosine', got {self.recon_loss!r}")
        for name in ("orth_loss_weight", "class_loss_weight", "kl_loss_weight", "recon_loss_weight"):
            value = getattr(self, name)
            if value < 0:
                errors.append(f"`{name}` must be >= 0, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"`dropout` must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.lambda_v <= 1.0:
            errors.append(f"`lambda_v` must be in [0, 1], got {self.lambda_v}")
        if self.logvar_clamp <= 0:
            errors.append(f"`logvar_clamp` must be > 0, got {self.logvar_clamp}")
        if self.initializer_range <= 0:
            errors.append(f"`initializer_range` must be > 0, got {self.initializer_range}")
        if self.hidden_act not in ACT2FN:
            errors.append(f"`hidden_act` must be one of {sorted(ACT2FN)}, got {self.hidden_act!r}")
        return errors

    def _size_errors(self) -> list[str]:
        """Sizes above the ceilings (module constants), found before anything is allocated."""
        errors = []
        for name, ceiling in MAX_FIELD_VALUES.items():
            value = getattr(self, name)
            if value is not None and value > ceiling:
                errors.append(f"`{name}` is {value}, above the ceiling of {ceiling} (a corrupt or malicious config?)")
        for name in ("encoder_hidden_sizes", "decoder_hidden_sizes"):
            sizes = getattr(self, name)
            if len(sizes) > MAX_HIDDEN_LAYERS or any(size > 2**16 for size in sizes):
                errors.append(
                    f"`{name}` must have at most {MAX_HIDDEN_LAYERS} sizes of at most {2**16}, got {len(sizes)} sizes "
                    f"up to {max(sizes, default=0)} (a corrupt or malicious config?)"
                )
        if not errors and self._estimated_num_parameters() > MAX_PARAMETERS:
            errors.append(
                f"the sizes make a model of about {self._estimated_num_parameters():.3g} parameters, above the ceiling "
                f"of {MAX_PARAMETERS:.3g} (a corrupt or malicious config?)"
            )
        return errors

    def _estimated_num_parameters(self) -> int:
        """The model's parameter count from the sizes alone (weights and biases of every linear layer)."""

        def mlp(in_features, hidden, out_features):
            sizes = [in_features, *hidden, out_features]
            return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))

        encoders = mlp(self.image_feature_dim, self.encoder_hidden_sizes, self.appearance_dim)
        encoders += mlp(self.video_feature_dim, self.encoder_hidden_sizes, self.appearance_dim)
        encoders += mlp(self.video_feature_dim, self.encoder_hidden_sizes, self.motion_dim)
        motion = 2 * (self.motion_dim + 1) * self.latent_dim
        decoder = mlp(self.latent_dim + self.appearance_dim, self.decoder_hidden_sizes, self.video_feature_dim)
        classifier = (self.appearance_dim + 1) * (self.num_labels or 0)
        return encoders + motion + decoder + classifier


# MAP-IVR's own fields, which `from_dict` applies before construction; the common `PreTrainedConfig` ones (`dtype`,
# `return_dict`, `num_labels`...) keep the base class's handling.
_OWN_FIELDS = frozenset(f.name for f in dataclasses.fields(MapIvrConfig)) - {
    f.name for f in dataclasses.fields(PreTrainedConfig)
}
