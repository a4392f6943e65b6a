"""MapIvrConfig and MapIvrModel: config validation, losses, pooling, scoring and ranking."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
from xmodal.map_ivr.modeling_map_ivr import (
    MapIvrEncodedVideos,
    MapIvrModel,
    MapIvrModelOutput,
    kl_divergence_loss,
    orthogonality_loss,
    pool_proposals,
    reconstruction_loss,
)


class MapIvrModelTester:
    """Tiny config and inputs (transformers' XModelTester style)."""

    image_dim, video_dim, appearance_dim, latent_dim, num_labels = 6, 8, 4, 3, 3

    def config(self, **overrides) -> MapIvrConfig:
        kwargs = dict(
            image_feature_dim=self.image_dim,
            video_feature_dim=self.video_dim,
            appearance_dim=self.appearance_dim,
            motion_dim=self.appearance_dim,
            latent_dim=self.latent_dim,
            encoder_hidden_sizes=[5],
            decoder_hidden_sizes=[7],
            num_labels=self.num_labels,
            proposal_top_k=2,
            num_samples=4,
            score_chunk_size=1024,
            initializer_range=0.5,  # large enough that distances are well spread in tests
        )
        kwargs.update(overrides)
        return MapIvrConfig(**kwargs)

    def model(self, **overrides) -> MapIvrModel:
        torch.manual_seed(0)
        return MapIvrModel(self.config(**overrides)).eval()

    def inputs(self, batch=5, proposals=4, seed=1):
        g = torch.Generator().manual_seed(seed)
        return dict(
            image_features=torch.randn(batch, self.image_dim, generator=g),
            video_features=torch.randn(batch, proposals, self.video_dim, generator=g),
            proposal_scores=torch.rand(batch, proposals, self.num_labels, generator=g),
            labels=torch.arange(batch) % self.num_labels,
        )


tester = MapIvrModelTester()


# ---------------------------------------------------------------- config


def test_config_defaults_and_round_trip(tmp_path):
    config = MapIvrConfig()
    assert config.model_type == "map_ivr"
    assert (config.image_feature_dim, config.video_feature_dim, config.num_labels) == (4096, 4096, 18)
    custom = tester.config(num_labels=7, orth_loss="squared", recon_loss="mse", lambda_v=0.25)
    custom.save_pretrained(tmp_path)
    loaded = MapIvrConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == custom.to_dict()
    assert loaded.num_labels == 7 and loaded.encoder_hidden_sizes == [5]


@pytest.mark.parametrize(
    "field, value",
    [
        ("motion_dim", 3),
        ("latent_dim", 0),
        ("orth_loss", "cos"),
        ("recon_loss", "l1"),
        ("lambda_v", 1.5),
        ("dropout", 1.0),
        ("kl_loss_weight", -0.1),
        ("num_samples", 0),
        ("proposal_top_k", 0),
        ("score_chunk_size", 0),
        ("encoder_hidden_sizes", [4, 0]),
        ("hidden_act", "nope"),
        ("num_labels", 0),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        tester.config(**{field: value})


def test_invalid_values_are_reported_together():
    with pytest.raises(ValueError) as error:
        tester.config(latent_dim=0, orth_loss="cos", lambda_v=1.5)
    for field in ("latent_dim", "orth_loss", "lambda_v"):
        assert f"`{field}`" in str(error.value)


def test_motion_dim_is_derived_from_appearance_dim():
    assert MapIvrConfig(appearance_dim=8).motion_dim == 8
    assert MapIvrConfig().motion_dim == 512
    assert tester.config(motion_dim=None).motion_dim == tester.appearance_dim


# ---------------------------------------------------------------- overrides at load time

# Every field another is derived from: appearance_dim -> motion_dim, num_labels -> id2label / label2id.
OVERRIDES = {
    "appearance_dim": ({"appearance_dim": 6}, {"appearance_dim": 6, "motion_dim": 6, "num_labels": 3}),
    "appearance_dim and motion_dim": (
        {"appearance_dim": 6, "motion_dim": 6}, {"appearance_dim": 6, "motion_dim": 6, "num_labels": 3}
    ),
    "num_labels": ({"num_labels": 5}, {"appearance_dim": 4, "motion_dim": 4, "num_labels": 5}),
    "unrelated field": ({"lambda_v": 0.25}, {"appearance_dim": 4, "motion_dim": 4, "num_labels": 3}),
}


def check_derived(config: MapIvrConfig, expected: dict) -> None:
    for name, value in expected.items():
        assert getattr(config, name) == value, name
    assert len(config.id2label) == len(config.label2id) == config.num_labels


@pytest.mark.parametrize("case", OVERRIDES)
def test_config_from_pretrained_overrides_derive_from_the_final_values(tmp_path, case):
    override, expected = OVERRIDES[case]
    tester.config(motion_dim=None).save_pretrained(tmp_path)
    check_derived(MapIvrConfig.from_pretrained(tmp_path, **override), expected)


@pytest.mark.parametrize("case", OVERRIDES)
def test_model_from_pretrained_overrides_derive_from_the_final_values(tmp_path, case):
    override, expected = OVERRIDES[case]
    tester.model().save_pretrained(tmp_path)  # motion_dim stored explicitly
    model = MapIvrModel.from_pretrained(tmp_path, ignore_mismatched_sizes=True, **override)
    check_derived(model.config, expected)
    assert model.video_appearance_encoder.output.out_features == expected["appearance_dim"]
    assert model.video_motion_encoder.output.out_features == expected["motion_dim"]
    assert model.classifier.out_features == expected["num_labels"]


def test_overriding_motion_dim_alone_is_still_validated(tmp_path):
    tester.config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`motion_dim`"):
        MapIvrConfig.from_pretrained(tmp_path, motion_dim=6)


# ---------------------------------------------------------------- transformers conventions


def test_unknown_forward_arguments_raise_a_type_error_naming_them():
    model = tester.model()
    inputs = tester.inputs()
    labels = inputs.pop("labels")
    with pytest.raises(TypeError, match="label"):
        model(**inputs, label=labels)  # a typo for `labels`
    with pytest.raises(TypeError, match="bogus, other"):
        model(**inputs, other=1, bogus=2)
    assert model(**inputs, labels=labels, output_hidden_states=False).class_loss is not None


def test_return_dict_false_gives_the_outputs_as_a_tuple():
    model = tester.model()
    inputs = tester.inputs()
    as_output = model(**inputs)
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_output.to_tuple())
    for a, b in zip(as_tuple, as_output.to_tuple()):
        assert torch.equal(a, b)
    model.config.return_dict = False
    assert isinstance(model(**inputs), tuple)


def test_unknown_scoring_options_raise_a_type_error_naming_them():
    model = tester.model()
    inputs = tester.inputs()
    with pytest.raises(TypeError, match="num_sample"):
        model.score(inputs["image_features"], inputs["video_features"], num_sample=3)
    with pytest.raises(TypeError, match="chunksize"):
        model.rank(inputs["image_features"], inputs["video_features"], chunksize=3)


def test_activation_checkpointing_is_refused_by_transformers():
    model = tester.model()
    assert not model.supports_gradient_checkpointing
    with pytest.raises(ValueError, match="does not support"):
        model.activation_checkpointing_enable()


# ---------------------------------------------------------------- losses against hand computations


def test_orthogonality_loss_forms():
    motion = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    appearance = torch.tensor([[0.0, 2.0], [3.0, 0.0], [-1.0, 0.0]])
    # cosines: 0, 1/sqrt(2), -1
    assert orthogonality_loss(motion, appearance, "abs").item() == pytest.approx((0 + 1 / math.sqrt(2) + 1) / 3)
    assert orthogonality_loss(motion, appearance, "squared").item() == pytest.approx((0 + 0.5 + 1) / 3)
    # anti-parallel features are penalised as much as parallel ones (plain cos would reward them)
    assert orthogonality_loss(motion[2:], appearance[2:], "abs").item() == pytest.approx(1.0)


def test_kl_divergence_loss():
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # row 0: 0.5 * [(1 + 1 - 1 - 0) + (0 + 2 - 1 - ln 2)] ; row 1: 0
    expected = (0.5 * (1.0 + 1.0 - math.log(2.0)) + 0.0) / 2
    assert kl_divergence_loss(mean, logvar).item() == pytest.approx(expected)


def test_reconstruction_loss_forms():
    target = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    recon = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert reconstruction_loss(target, recon, "mse").item() == pytest.approx((1 + 4 + 0 + 1) / 4)
    # cos((1,2),(0,0)) = 0 (eps-guarded), cos((1,0),(1,1)) = 1/sqrt(2)
    assert reconstruction_loss(target, recon, "cosine").item() == pytest.approx((1 + (1 - 1 / math.sqrt(2))) / 2)


def _set_linear(layer, weight, bias=None):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias if bias is not None else [0.0] * len(weight), dtype=torch.float32))


def test_forward_against_hand_computation():
    config = MapIvrConfig(
        image_feature_dim=2,
        video_feature_dim=2,
        appearance_dim=2,
        motion_dim=2,
        latent_dim=1,
        encoder_hidden_sizes=[],
        decoder_hidden_sizes=[],
        num_labels=2,
        orth_loss_weight=0.5,
        class_loss_weight=2.0,
        kl_loss_weight=0.25,
        recon_loss_weight=3.0,
        recon_loss="mse",
    )
    model = MapIvrModel(config).eval()
    _set_linear(model.image_appearance_encoder.output, [[1, 0], [0, 1]])  # a^u = u
    _set_linear(model.video_appearance_encoder.output, [[1, 0], [0, 1]])  # a^v = v
    _set_linear(model.video_motion_encoder.output, [[1, 1], [0, 1]])  # m^v = (v0 + v1, v1)
    _set_linear(model.motion_mean, [[1, 0]])  # mu = m0
    _set_linear(model.motion_logvar, [[0, 0]], [math.log(2.0)])  # log sigma^2 = ln 2
    _set_linear(model.video_decoder.output, [[1, 0, 0], [0, 1, 1]])  # v_hat = (z, a0 + a1)
    _set_linear(model.classifier, [[1, 0], [0, 1]])  # logits = a
    u = torch.tensor([[1.0, 0.0]])
    v = torch.tensor([[1.0, 1.0]])
    out = model(u, v, labels=torch.tensor([1]))

    # m^v = (2, 1), a^v = (1, 1): cos = 3 / (sqrt(5) sqrt(2))
    orth = 3 / (math.sqrt(5) * math.sqrt(2))
    # mu = 2, sigma^2 = 2: KL = 0.5 (4 + 2 - 1 - ln 2)
    kl = 0.5 * (4 + 2 - 1 - math.log(2.0))
    # eval: z = mu = 2; v_hat = (2, 1 + 0) vs v_bar = (1, 1): mse = (1 + 0) / 2
    recon = 0.5
    # logits video (1, 1) -> -log 0.5; image (1, 0) -> -log(e^0 / (e^1 + e^0))
    class_loss = math.log(2.0) + math.log(math.e + 1.0)
    assert out.orth_loss.item() == pytest.approx(orth)
    assert out.kl_loss.item() == pytest.approx(kl)
    assert out.recon_loss.item() == pytest.approx(recon)
    assert out.class_loss.item() == pytest.approx(class_loss)
    assert out.loss.item() == pytest.approx(0.5 * orth + 0.25 * kl + 3.0 * recon + 2.0 * class_loss)
    assert torch.equal(out.motion_code, out.motion_mean)
    assert out.reconstruction.tolist() == [[2.0, 1.0]]


def test_forward_without_labels_has_no_class_loss_and_cosine_recon():
    model = tester.model()
    inputs = tester.inputs()
    inputs.pop("labels")
    out = model(**inputs)
    assert isinstance(out, MapIvrModelOutput) and out.class_loss is None
    expected = (
        model.config.orth_loss_weight * out.orth_loss
        + model.config.kl_loss_weight * out.kl_loss
        + model.config.recon_loss_weight * out.recon_loss
    )
    assert torch.allclose(out.loss, expected)
    cos = F.cosine_similarity(out.video_features, out.reconstruction, dim=-1)
    assert torch.allclose(out.recon_loss, (1 - cos).mean())
    assert out.image_appearance.shape == (5, tester.appearance_dim)
    assert out.video_motion.shape == (5, tester.appearance_dim)
    assert out.reconstruction.shape == (5, tester.video_dim)
    assert out.image_logits.shape == out.video_logits.shape == (5, tester.num_labels)
    assert isinstance(model(**inputs, return_dict=False), tuple)


def test_training_mode_reparameterises_and_every_parameter_gets_a_gradient():
    model = tester.model(dropout=0.0).train()
    inputs = tester.inputs()
    torch.manual_seed(3)
    out = model(**inputs)
    std = torch.exp(0.5 * out.motion_logvar)
    torch.manual_seed(3)
    eps = torch.randn_like(out.motion_mean)
    assert torch.allclose(out.motion_code, out.motion_mean + eps * std)
    assert not torch.allclose(out.motion_code, out.motion_mean)
    out.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_input_errors_name_the_input():
    model = tester.model()
    inputs = tester.inputs()
    with pytest.raises(ValueError, match="image_features"):
        model(inputs["image_features"][:, :3], inputs["video_features"])
    with pytest.raises(ValueError, match="same batch size"):
        model(inputs["image_features"][:2], inputs["video_features"])
    with pytest.raises(ValueError, match="labels"):
        model(inputs["image_features"], inputs["video_features"], labels=torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- proposal pooling


def test_pool_proposals_vectors_pass_through():
    v = torch.randn(3, 4)
    assert pool_proposals(v) is v
    with pytest.raises(ValueError, match="proposal bags"):
        pool_proposals(v, proposal_mask=torch.ones(3, 1))


def test_pool_proposals_top_k_by_score():
    feats = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # proposal j of video b = 4b + j
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.3, 0.2, 0.3]])
    pooled = pool_proposals(feats, scores, top_k=2)
    # video 0 keeps proposals 1 and 3; video 1 has a tie at 0.3: the earlier ones (0, 1) win
    assert pooled.flatten().tolist() == [(1 + 3) / 2, (4 + 5) / 2]
    assert pool_proposals(feats, scores, top_k=10).flatten().tolist() == [1.5, 5.5]


def test_pool_proposals_class_scores_use_the_max_class():
    feats = torch.tensor([[[1.0], [2.0], [3.0]]])
    class_scores = torch.tensor([[[0.1, 0.8], [0.6, 0.1], [0.3, 0.2]]])  # confidences 0.8, 0.6, 0.3
    assert pool_proposals(feats, class_scores, top_k=1).item() == 1.0
    assert pool_proposals(feats, class_scores, top_k=2).item() == 1.5


def test_pool_proposals_masks_and_no_scores():
    feats = torch.tensor([[[1.0], [2.0], [30.0]], [[4.0], [5.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # no scores: every valid proposal averaged
    assert pool_proposals(feats, proposal_mask=mask).flatten().tolist() == [1.5, 5.0]
    # padding with the highest score is still ignored; fewer valid than k -> all valid ones
    scores = torch.tensor([[0.1, 0.2, 0.99], [0.9, 0.1, 0.8]])
    assert pool_proposals(feats, scores, mask, top_k=2).flatten().tolist() == [1.5, 5.0]
    with pytest.raises(ValueError, match=r"video\(s\) \[1\]"):
        pool_proposals(feats, proposal_mask=torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="proposal_scores"):
        pool_proposals(feats, torch.ones(2, 5), top_k=1)


def test_forward_pools_bags_with_config_top_k():
    model = tester.model()
    inputs = tester.inputs()
    out = model(**inputs)
    expected = pool_proposals(inputs["video_features"], inputs["proposal_scores"], top_k=2)
    assert torch.equal(out.video_features, expected)
    direct = model(inputs["image_features"], expected, labels=inputs["labels"])
    assert torch.equal(direct.loss, out.loss)


# ---------------------------------------------------------------- scoring


def _naive_scores(model, image_features, bags, scores, codes, lambda_v, top_k):
    """Per-pair Python loop, written independently of the vectorised code."""
    q_count, n_count = len(image_features), len(bags)
    s_a = torch.zeros(q_count, n_count)
    s_v = torch.zeros(q_count, n_count)
    with torch.no_grad():
        for n in range(n_count):
            confidence = scores[n].max(dim=-1).values.tolist()
            keep = sorted(range(len(confidence)), key=lambda j: (-confidence[j], j))[:top_k]
            v_bar = bags[n][keep].mean(dim=0)
            a_v = model.video_appearance_encoder(v_bar)
            for q in range(q_count):
                a_u = model.image_appearance_encoder(image_features[q])
                s_a[q, n] = 1 - F.cosine_similarity(a_u, a_v, dim=0)
                distances = []
                for i in range(codes.shape[1]):
                    v_hat = model.video_decoder(torch.cat([codes[q, i], a_u]))
                    distances.append(1 - F.cosine_similarity(v_bar, v_hat, dim=0))
                s_v[q, n] = min(distances)
    return s_a, s_v, (1 - lambda_v) * s_a + lambda_v * s_v


def test_score_equals_naive_per_pair_loop():
    model = tester.model()
    queries = tester.inputs(batch=3, seed=5)["image_features"]
    gallery = tester.inputs(batch=7, proposals=4, seed=6)
    out = model.score(
        queries,
        gallery["video_features"],
        lambda_v=0.3,
        generator=torch.Generator().manual_seed(42),
        proposal_scores=gallery["proposal_scores"],
    )
    codes = torch.randn(3, 4, tester.latent_dim, generator=torch.Generator().manual_seed(42))
    s_a, s_v, s_all = _naive_scores(
        model, queries, gallery["video_features"], gallery["proposal_scores"], codes, 0.3, top_k=2
    )
    assert out.s_a.shape == out.s_v.shape == out.s_all.shape == (3, 7)
    assert torch.allclose(out.s_a, s_a, atol=1e-6)
    assert torch.allclose(out.s_v, s_v, atol=1e-6)
    assert torch.allclose(out.s_all, s_all, atol=1e-6)
    assert out.s_v.std() > 1e-3  # the comparison is not between constants


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5])
def test_chunked_scoring_matches_unchunked(chunk_size):
    model = tester.model()
    queries = tester.inputs(batch=4, seed=5)["image_features"]
    gallery = tester.inputs(batch=9, seed=6)
    kwargs = dict(proposal_scores=gallery["proposal_scores"])
    full = model.score(queries, gallery["video_features"], generator=torch.Generator().manual_seed(0), **kwargs)
    chunked = model.score(
        queries, gallery["video_features"], generator=torch.Generator().manual_seed(0), chunk_size=chunk_size, **kwargs
    )
    for name in ("s_a", "s_v", "s_all"):
        assert torch.allclose(full[name], chunked[name], atol=1e-6), name


def test_score_is_deterministic_with_a_seeded_generator_and_samples_per_query():
    model = tester.model()
    queries = tester.inputs(batch=3, seed=5)["image_features"]
    gallery = tester.inputs(batch=6, seed=6)["video_features"]
    first = model.score(queries, gallery, generator=torch.Generator().manual_seed(7))
    again = model.score(queries, gallery, generator=torch.Generator().manual_seed(7))
    other = model.score(queries, gallery, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.s_v, again.s_v) and torch.equal(first.s_all, again.s_all)
    assert torch.equal(first.s_a, other.s_a)  # S_A does not sample
    assert not torch.equal(first.s_v, other.s_v)
    # lambda_v mixes exactly; h = num_samples
    mixed = model.score(queries, gallery, lambda_v=0.8, num_samples=4, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(mixed.s_all, 0.2 * first.s_a + 0.8 * first.s_v)


def test_hallucinated_videos_are_decoded_once_per_query():
    model = tester.model()
    decoded_rows = []
    handle = model.video_decoder.register_forward_hook(lambda m, args, out: decoded_rows.append(out[..., 0].numel()))
    queries = tester.inputs(batch=3, seed=5)["image_features"]
    gallery = tester.inputs(batch=11, seed=6)["video_features"]
    model.score(queries, gallery, num_samples=5, chunk_size=2)
    handle.remove()
    assert sum(decoded_rows) == 3 * 5  # Q * h, independent of the gallery size and chunking


def test_score_with_encoded_gallery_and_numpy_inputs():
    model = tester.model()
    queries = tester.inputs(batch=3, seed=5)["image_features"]
    gallery = tester.inputs(batch=6, seed=6)
    encoded = model.encode_videos(gallery["video_features"], gallery["proposal_scores"], chunk_size=4)
    assert isinstance(encoded, MapIvrEncodedVideos) and len(encoded) == 6
    assert torch.allclose(encoded.appearance.norm(dim=-1), torch.ones(6))
    assert torch.allclose(encoded.video_features.norm(dim=-1), torch.ones(6))
    raw = model.score(
        queries, gallery["video_features"], proposal_scores=gallery["proposal_scores"],
        generator=torch.Generator().manual_seed(1),
    )
    cached = model.score(queries, encoded, generator=torch.Generator().manual_seed(1), chunk_size=4)
    from_numpy = model.score(
        queries.numpy(), gallery["video_features"].numpy(), proposal_scores=gallery["proposal_scores"].numpy(),
        generator=torch.Generator().manual_seed(1),
    )
    for name in ("s_a", "s_v", "s_all"):
        assert torch.allclose(raw[name], cached[name], atol=1e-6)
        assert torch.allclose(raw[name], from_numpy[name], atol=1e-6)


def test_score_uses_eval_mode_without_gradients_and_restores_training():
    model = tester.model(dropout=0.5).train()
    queries = tester.inputs(batch=2, seed=5)["image_features"]
    gallery = tester.inputs(batch=3, seed=6)["video_features"]
    a = model.score(queries, gallery, generator=torch.Generator().manual_seed(0))
    b = model.score(queries, gallery, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.s_all, b.s_all)  # dropout is off inside score
    assert model.training and not a.s_all.requires_grad


def test_score_with_explicit_motion_codes():
    model = tester.model()
    queries = tester.inputs(batch=2, seed=5)["image_features"]
    gallery = tester.inputs(batch=3, seed=6)["video_features"]
    codes = torch.randn(2, 6, tester.latent_dim, generator=torch.Generator().manual_seed(9))
    explicit = model.score(queries, gallery, motion_codes=codes)
    sampled = model.score(queries, gallery, num_samples=6, generator=torch.Generator().manual_seed(9))
    assert torch.equal(explicit.s_v, sampled.s_v)
    with pytest.raises(ValueError, match="motion_codes"):
        model.score(queries, gallery, motion_codes=codes[:1])


# ---------------------------------------------------------------- ranking


@pytest.mark.parametrize("chunk_size", [2, 1024])
def test_rank_matches_sorted_scores(chunk_size):
    model = tester.model()
    queries = tester.inputs(batch=4, seed=5)["image_features"]
    gallery = tester.inputs(batch=9, seed=6)
    kwargs = dict(proposal_scores=gallery["proposal_scores"], chunk_size=chunk_size)
    scores = model.score(queries, gallery["video_features"], generator=torch.Generator().manual_seed(3), **kwargs)
    for by in ("s_all", "s_a", "s_v"):
        ranking = model.rank(
            queries, gallery["video_features"], top_k=4, by=by, generator=torch.Generator().manual_seed(3), **kwargs
        )
        expected = torch.sort(scores[by], dim=1, stable=True)
        assert ranking.indices.shape == (4, 4)
        assert torch.equal(ranking.indices, expected.indices[:, :4])
        assert torch.allclose(ranking.distances, expected.values[:, :4], atol=1e-6)


def test_rank_breaks_ties_by_index_and_caps_k():
    model = tester.model()
    queries = tester.inputs(batch=2, seed=5)["image_features"]
    one = model.encode_videos(tester.inputs(batch=1, seed=6)["video_features"])
    # six identical encoded videos in equal-shaped chunks: exactly tied distances
    gallery = MapIvrEncodedVideos(one.appearance.expand(6, -1), one.video_features.expand(6, -1))
    ranking = model.rank(queries, gallery, top_k=10, chunk_size=2, generator=torch.Generator().manual_seed(0))
    assert ranking.indices.tolist() == [[0, 1, 2, 3, 4, 5]] * 2
    assert torch.equal(ranking.distances, ranking.distances[:, :1].expand(-1, 6))
    with pytest.raises(ValueError, match="by"):
        model.rank(queries, gallery, by="s_x")


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = tester.model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = MapIvrModel.from_pretrained(tmp_path).eval()
    inputs = tester.inputs()
    before, after = model(**inputs), loaded(**inputs)
    for name in ("loss", "image_appearance", "video_appearance", "video_motion", "reconstruction", "video_logits"):
        assert torch.equal(before[name], after[name]), name
    queries = tester.inputs(batch=2, seed=5)["image_features"]
    a = model.score(queries, inputs["video_features"], generator=torch.Generator().manual_seed(0))
    b = loaded.score(queries, inputs["video_features"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.s_all, b.s_all)


def test_encode_images_returns_raw_appearance():
    model = tester.model()
    queries = tester.inputs(batch=3, seed=5)["image_features"]
    with torch.no_grad():
        expected = model.image_appearance_encoder(queries)
    assert torch.allclose(model.encode_images(np.asarray(queries), chunk_size=2), expected, atol=1e-7)
