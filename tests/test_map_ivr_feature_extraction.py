"""MapIvrFeatureExtractor: APIVR normalisation, padding, masks, save/load."""

import json

import numpy as np
import pytest
import torch

from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
from xmodal.map_ivr.feature_extraction_map_ivr import MapIvrFeatureExtractor
from xmodal.map_ivr.modeling_map_ivr import MapIvrModel


IMAGES = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0], [4.0, 8.0, 5.0]])
BAGS = [
    np.array([[0.0, 10.0], [2.0, 20.0]]),
    np.array([[4.0, 0.0]]),
    np.array([[6.0, 30.0], [8.0, 40.0], [10.0, 50.0]]),
]


def fitted() -> MapIvrFeatureExtractor:
    return MapIvrFeatureExtractor().fit(IMAGES, BAGS)


def test_fit_stores_training_statistics_as_lists():
    extractor = fitted()
    assert extractor.image_mean == [2.0, 4.0, 5.0]
    assert extractor.image_min == [0.0, 1.0, 5.0] and extractor.image_max == [4.0, 8.0, 5.0]
    # statistics over all 6 valid proposals
    assert extractor.video_mean == [5.0, 25.0]
    assert extractor.video_min == [0.0, 0.0] and extractor.video_max == [10.0, 50.0]
    assert (extractor.image_feature_dim, extractor.video_feature_dim) == (3, 2)


def test_normalisation_is_mean_centring_and_min_max_scaling():
    batch = fitted()(IMAGES, BAGS)
    # (x - mean) / (max - min); the constant third image dimension is only centred
    expected_images = np.array([[-0.5, -3 / 7, 0.0], [0.0, -1 / 7, 0.0], [0.5, 4 / 7, 0.0]], dtype=np.float32)
    assert torch.allclose(batch["image_features"], torch.from_numpy(expected_images))
    video = batch["video_features"]
    assert video.shape == (3, 3, 2) and video.dtype == torch.float32
    assert torch.allclose(video[0, 0], torch.tensor([-0.5, -0.3]))
    assert torch.allclose(video[2, 2], torch.tensor([0.5, 0.5]))
    assert batch["proposal_mask"].tolist() == [[True, True, False], [True, False, False], [True, True, True]]
    assert batch["proposal_mask"].dtype == torch.bool
    # padding stays exactly zero
    assert torch.equal(video[1, 1:], torch.zeros(2, 2))
    assert "proposal_scores" not in batch


def test_fit_ignores_masked_padding():
    padded = np.zeros((3, 3, 2))
    mask = np.zeros((3, 3), dtype=bool)
    for i, bag in enumerate(BAGS):
        padded[i, : len(bag)] = bag
        mask[i, : len(bag)] = True
    padded[1, 2] = 1000.0  # garbage in the padding must not change the statistics
    extractor = MapIvrFeatureExtractor().fit(IMAGES, padded, proposal_mask=mask)
    assert extractor.to_dict() == fitted().to_dict()
    from_padded = extractor(IMAGES, padded, proposal_mask=mask)
    from_lists = fitted()(IMAGES, BAGS)
    assert torch.equal(from_padded["video_features"], from_lists["video_features"])
    assert torch.equal(from_padded["proposal_mask"], from_lists["proposal_mask"])


def test_scores_are_padded_in_both_layouts():
    extractor = fitted()
    confidences = [np.array([0.2, 0.9]), np.array([0.5]), np.array([0.1, 0.2, 0.3])]
    batch = extractor(IMAGES, BAGS, proposal_scores=confidences)
    expected = torch.tensor([[0.2, 0.9, 0.0], [0.5, 0.0, 0.0], [0.1, 0.2, 0.3]])
    assert torch.equal(batch["proposal_scores"], expected)
    class_scores = [np.ones((2, 4)), np.ones((1, 4)), np.ones((3, 4))]
    assert extractor(IMAGES, BAGS, proposal_scores=class_scores)["proposal_scores"].shape == (3, 3, 4)
    with pytest.raises(ValueError, match=r"proposal_scores\[1\]"):
        extractor(IMAGES, BAGS, proposal_scores=[np.ones(2), np.ones(2), np.ones(3)])


def test_vectors_labels_and_numpy_output():
    vectors = np.array([[0.0, 10.0], [4.0, 0.0], [10.0, 50.0]])
    extractor = MapIvrFeatureExtractor().fit(IMAGES, vectors)
    batch = extractor(IMAGES, vectors, labels=[0, 2, 1], return_tensors="np")
    assert isinstance(batch["video_features"], np.ndarray) and batch["video_features"].shape == (3, 2)
    assert "proposal_mask" not in batch
    assert batch["labels"].tolist() == [0, 2, 1] and batch["labels"].dtype == np.int64
    assert np.allclose(batch["video_features"][0], [(0 - 14 / 3) / 10, (10 - 20) / 50])


def test_save_load_round_trip(tmp_path):
    extractor = fitted()
    extractor.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert stored["video_max"] == [10.0, 50.0] and stored["feature_extractor_type"] == "MapIvrFeatureExtractor"
    loaded = MapIvrFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
    rng = np.random.default_rng(0)
    images, bags = rng.normal(size=(4, 3)), [rng.normal(size=(k, 2)) for k in (1, 3, 2, 2)]
    a, b = extractor(images, bags), loaded(images, bags)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_unfitted_extractor_errors_or_passes_through():
    with pytest.raises(ValueError, match="call fit"):
        MapIvrFeatureExtractor()(IMAGES, BAGS)
    identity = MapIvrFeatureExtractor(do_normalize=False)(IMAGES, BAGS)
    assert torch.equal(identity["image_features"], torch.tensor(IMAGES, dtype=torch.float32))
    assert torch.equal(identity["video_features"][2], torch.tensor(BAGS[2], dtype=torch.float32))


def test_input_errors():
    extractor = fitted()
    with pytest.raises(ValueError, match="image_features has feature size 2"):
        extractor(IMAGES[:, :2], BAGS)
    with pytest.raises(ValueError, match="different numbers of rows"):
        extractor(IMAGES[:2], BAGS)
    with pytest.raises(ValueError, match="no valid proposal"):
        extractor(IMAGES, np.zeros((3, 2, 2)), proposal_mask=np.array([[1, 0], [0, 0], [1, 1]]))
    with pytest.raises(ValueError, match="only vectors"):
        extractor(IMAGES, [np.zeros(2), np.zeros((1, 2)), np.zeros(2)])
    with pytest.raises(ValueError, match="given together"):
        MapIvrFeatureExtractor(image_mean=[0.0])


def test_output_feeds_the_model():
    rng = np.random.default_rng(1)
    images, bags = rng.normal(size=(4, 3)), [rng.normal(size=(k, 2)) for k in (1, 3, 2, 2)]
    scores = [rng.random(len(b)) for b in bags]
    extractor = MapIvrFeatureExtractor().fit(images, bags)
    config = MapIvrConfig(
        image_feature_dim=3, video_feature_dim=2, appearance_dim=4, motion_dim=4, latent_dim=2,
        encoder_hidden_sizes=[4], decoder_hidden_sizes=[4], num_labels=2,
    )
    model = MapIvrModel(config).eval()
    batch = extractor(images, bags, proposal_scores=scores, labels=[0, 1, 0, 1])
    out = model(**batch)
    assert out.loss.ndim == 0 and out.class_loss is not None
