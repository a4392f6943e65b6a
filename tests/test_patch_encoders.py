"""
FashionBERT's frozen CNN patch encoders: every transformers family in `CNN_PATCH_ENCODERS` (tiny random configs) in
grid and crop mode, its feature size from its config, weights loaded from a checkpoint, the cache fingerprint; and the
packaged ImageNet MobileNetV2 on real photographs (scikit-image's), through the processor and the retriever.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextV2Config,
    MobileNetV2Config,
    RegNetConfig,
    ResNetConfig,
)

from xmodal import FashionBertConfig, FashionBertForImageTextRetrieval, FashionBertImageProcessor, FashionBertModel
from xmodal.data.preprocessing import patch_encoder_fingerprint
from xmodal.fashionbert.configuration_fashionbert import CNN_PATCH_ENCODERS
from xmodal.pretrained import packaged_patch_encoder


TINY_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24, max_position_embeddings=16)
# Every family, tiny: two stages (stride 8 for the stage-wise ones; MobileNetV2's 17 blocks at a narrow width, stride 16
# so that 64 px covers the 4 x 4 grid, initialised wide enough that 17 random blocks do not vanish).
TINY_CNNS = {
    "resnet": ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic"),
    "regnet": RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8),
    "convnext": ConvNextConfig(num_stages=2, hidden_sizes=[8, 12], depths=[1, 1]),
    "convnextv2": ConvNextV2Config(num_stages=2, hidden_sizes=[8, 12], depths=[1, 1]),
    "mobilenet_v2": MobileNetV2Config(depth_multiplier=0.35, finegrained_output=False, tf_padding=False, output_stride=16, initializer_range=0.3),
}


def test_every_supported_family_has_a_tiny_test_config():
    assert set(TINY_CNNS) == set(CNN_PATCH_ENCODERS)


def tiny_config(family: str, mode: str = "grid", **fields) -> FashionBertConfig:
    return FashionBertConfig(
        **TINY_BERT, image_size=64, patch_grid=4, patch_encoder_type=family, patch_encoder_config=TINY_CNNS[family],
        patch_feature_mode=mode, patch_crop_size=32, **fields,
    )  # fmt: skip


def tiny_model(family: str, mode: str = "grid", seed: int = 0) -> FashionBertModel:
    torch.manual_seed(seed)
    return FashionBertModel(tiny_config(family, mode)).eval()


@pytest.mark.parametrize("family", sorted(CNN_PATCH_ENCODERS))
def test_the_feature_size_is_read_from_the_config_as_the_model_computes_it(family):
    config = tiny_config(family)
    model = FashionBertModel(config)
    assert type(model.patch_encoder) is type(AutoModel.from_config(TINY_CNNS[family]))
    channels = model.patch_encoder(pixel_values=torch.zeros(1, 3, 64, 64)).last_hidden_state.shape[1]
    assert config.patch_feature_dim == channels
    # A stage-wise config builds as many stages as it describes (here 2 of ResNet-50's 4 widths: 512 channels).
    assert FashionBertConfig(**TINY_BERT, patch_encoder_type="resnet", patch_encoder_config=ResNetConfig(depths=[1, 1])).patch_feature_dim == 512
    # And for the families' default (full-size) configs, without building them.
    default = FashionBertConfig(**TINY_BERT, patch_encoder_type=family)
    assert type(default.patch_encoder_config).model_type == family
    assert default.patch_feature_dim == {"resnet": 2048, "regnet": 1088, "convnext": 768, "convnextv2": 768, "mobilenet_v2": 1280}[family]


@pytest.mark.parametrize("family", sorted(CNN_PATCH_ENCODERS))
def test_grid_mode_pools_one_pass_and_crop_mode_encodes_each_patch_alone(family):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    grid_model = tiny_model(family, "grid")
    grid = grid_model.get_patch_features(pixels)
    feature_map = grid_model.patch_encoder(pixel_values=pixels).last_hidden_state
    expected = F.adaptive_avg_pool2d(feature_map, (4, 4)).flatten(2).transpose(1, 2)
    assert grid.shape == (2, 16, grid_model.config.patch_feature_dim) and torch.allclose(grid, expected)

    crop_model = tiny_model(family, "crop")
    crops = crop_model.get_patch_features(pixels, chunk_size=5)
    assert crops.shape == (2, 16, crop_model.config.patch_feature_dim)
    # Patch (row 1, column 2) of the second image: 16 x 16 pixels, resized to 32, encoded alone (row-major index 6).
    patch = F.interpolate(pixels[1:, :, 16:32, 32:48], size=(32, 32), mode="bilinear", align_corners=False)
    alone = crop_model.patch_encoder(pixel_values=patch).last_hidden_state.mean(dim=(-2, -1))[0]
    assert torch.allclose(crops[1, 6], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(crops[1, 6], crops[1, 5])


@pytest.mark.parametrize("family", sorted(CNN_PATCH_ENCODERS))
def test_the_patch_encoder_stays_frozen_and_the_model_attends_with_sdpa(family):
    model = tiny_model(family).train()
    assert not model.patch_encoder.training
    assert not any(p.requires_grad for p in model.patch_encoder.parameters())
    for implementation in ("eager", "sdpa"):  # the CNN has no attention: it stays eager
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        assert model.patch_encoder.config._attn_implementation == "eager"


def test_a_cnn_folder_loads_with_an_attention_implementation_asked_for(tmp_path):
    tiny_model("mobilenet_v2").save_pretrained(tmp_path)
    loaded = FashionBertModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert loaded.config._attn_implementation == "sdpa" and loaded.patch_encoder.config._attn_implementation == "eager"


def test_a_feature_map_smaller_than_the_grid_says_so(caplog):
    model = tiny_model("resnet")  # stride 8: 64 px -> 8 x 8, fine for a 4 x 4 grid
    model.config.patch_grid = 16
    with caplog.at_level("WARNING"):
        model.get_patch_features(torch.zeros(1, 3, 64, 64))
    assert "share features" in caplog.text


@pytest.mark.parametrize("family", sorted(CNN_PATCH_ENCODERS))
def test_weights_load_from_a_classifier_checkpoint_of_the_same_architecture(family, tmp_path):
    torch.manual_seed(3)
    AutoModelForImageClassification.from_config(TINY_CNNS[family]).save_pretrained(tmp_path / "cnn")
    model = tiny_model(family)
    model.load_patch_encoder_weights(tmp_path / "cnn")
    source = AutoModel.from_pretrained(tmp_path / "cnn")
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.patch_encoder.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in model.patch_encoder.parameters())


def test_weights_of_another_architecture_or_family_are_refused(tmp_path):
    other = ResNetConfig(**{**TINY_CNNS["resnet"].to_dict(), "hidden_act": "gelu"})
    AutoModel.from_config(other).save_pretrained(tmp_path / "gelu")
    with pytest.raises(ValueError, match="patch_encoder_config.hidden_act. is 'relu' but the checkpoint .* has 'gelu'"):
        tiny_model("resnet").load_patch_encoder_weights(tmp_path / "gelu")
    AutoModel.from_config(TINY_CNNS["convnext"]).save_pretrained(tmp_path / "convnext")
    with pytest.raises(ValueError, match="a 'convnext' checkpoint but `patch_encoder_type` is 'resnet'"):
        tiny_model("resnet").load_patch_encoder_weights(tmp_path / "convnext")
    pixels = FashionBertModel(FashionBertConfig(**TINY_BERT, image_size=16, patch_grid=4, patch_encoder_type="pixels"))
    with pytest.raises(ValueError, match="no CNN"):
        pixels.load_patch_encoder_weights(tmp_path / "convnext")


def test_the_config_keeps_the_family_through_dicts_and_overrides(tmp_path):
    config = tiny_config("mobilenet_v2")
    restored = FashionBertConfig.from_dict(config.to_dict())
    assert type(restored.patch_encoder_config) is MobileNetV2Config
    assert restored.patch_encoder_config.to_dict() == config.patch_encoder_config.to_dict()
    without_type = {k: v for k, v in TINY_CNNS["convnext"].to_dict().items() if k != "model_type"}
    assert type(FashionBertConfig(**TINY_BERT, patch_encoder_type="convnext", patch_encoder_config=without_type).patch_encoder_config) is ConvNextConfig
    config.save_pretrained(tmp_path)
    switched = FashionBertConfig.from_pretrained(tmp_path, patch_encoder_type="resnet")  # the sub-config is derived again
    assert type(switched.patch_encoder_config) is ResNetConfig and switched.patch_feature_dim == 2048
    with pytest.raises(ValueError, match="must be the config of a 'mobilenet_v2' model .* got model_type 'resnet'"):
        FashionBertConfig(**TINY_BERT, patch_encoder_type="mobilenet_v2", patch_encoder_config=TINY_CNNS["resnet"])
    with pytest.raises(ValueError, match="patch_encoder_type"):
        FashionBertConfig(**TINY_BERT, patch_encoder_type="vit")
    for family, huge in (("resnet", {"hidden_sizes": [2**20, 2**20], "depths": [2**10, 2**10]}),
                         ("convnext", {"patch_size": 2**16}), ("mobilenet_v2", {"min_depth": 2**15})):  # fmt: skip
        with pytest.raises(ValueError, match="ceiling"):
            FashionBertConfig(**TINY_BERT, patch_encoder_type=family, patch_encoder_config=huge)


def test_the_checkpoint_s_labels_and_path_stay_out_of_the_patch_encoder_config():
    weights = packaged_patch_encoder("mobilenet_v2")
    config = FashionBertConfig(**TINY_BERT, patch_encoder_type="mobilenet_v2", patch_encoder_config=AutoConfig.from_pretrained(weights))
    stored = config.to_diff_dict()["patch_encoder_config"]
    assert not {"id2label", "label2id", "architectures", "_name_or_path"} & set(stored)
    assert stored["tf_padding"] is False and weights not in str(config.to_dict())
    # Overriding the family with a dict of the new family's fields does not merge them into the old one's.
    switched = FashionBertConfig.from_dict(config.to_dict(), patch_encoder_type="convnext", patch_encoder_config={"hidden_sizes": [8, 12, 16, 20]})
    assert type(switched.patch_encoder_config) is ConvNextConfig and switched.patch_feature_dim == 20


def test_the_fingerprint_covers_family_mode_architecture_and_weights():
    fingerprints = {
        (family, mode): patch_encoder_fingerprint(tiny_model(family, mode)) for family in TINY_CNNS for mode in ("grid", "crop")
    }
    assert len(set(fingerprints.values())) == len(fingerprints)
    assert patch_encoder_fingerprint(tiny_model("convnext", seed=0)) == fingerprints["convnext", "grid"]
    assert patch_encoder_fingerprint(tiny_model("convnext", seed=1)) != fingerprints["convnext", "grid"]
    torch.manual_seed(0)
    wider = FashionBertModel(FashionBertConfig(
        **TINY_BERT, image_size=64, patch_grid=4, patch_encoder_type="convnext", patch_feature_mode="grid",
        patch_encoder_config=ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]),
    ))  # fmt: skip
    assert patch_encoder_fingerprint(wider) not in fingerprints.values()


# ----------------------------------------------------------------------------- the packaged MobileNetV2, real photos

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the real photographs (pip install '.[test]')")
# Real files as a user's catalogue has them: JPEG and PNG, RGB, grayscale and RGBA, landscape, portrait and square.
PHOTOS = ["coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "horse.png", "motorcycle_left.png"]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    images = [Image.open(Path(skimage_data.data_dir) / name) for name in PHOTOS]
    assert {image.mode for image in images} == {"RGB", "L", "RGBA"} and {image.format for image in images} == {"PNG", "JPEG"}
    return images


@pytest.fixture(scope="module")
def pretrained_encoder() -> FashionBertModel:
    """A tiny FashionBERT (dual-encoder heads) around the packaged ImageNet MobileNetV2, 8 x 8 grid at 256 px."""
    weights = packaged_patch_encoder("mobilenet_v2")
    config = FashionBertConfig(
        **TINY_BERT, image_size=256, patch_grid=8, patch_encoder_type="mobilenet_v2",
        patch_encoder_config=AutoConfig.from_pretrained(weights), patch_feature_mode="grid", contrastive_projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = FashionBertForImageTextRetrieval(config).eval()
    model.bert.load_patch_encoder_weights(weights)
    return model


def test_real_photos_get_distinct_patch_features_from_the_pretrained_cnn(photos, pretrained_encoder):
    pixels = FashionBertImageProcessor(image_size=256, patch_grid=8)(photos, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (len(photos), 3, 256, 256)
    features = pretrained_encoder.bert.get_patch_features(pixels)
    assert features.shape == (len(photos), 64, 1280) and torch.isfinite(features).all()
    pooled = F.normalize(features.mean(1), dim=-1)
    similarity = pooled @ pooled.T
    assert (similarity - torch.eye(len(photos))).max() < 0.95  # no two photos look alike to an ImageNet CNN
    # Within a photo, patches differ too (the cup's patches are not the table's).
    assert features[0].std(0).mean() > 0.1 * features[0].abs().mean()


def test_real_photo_files_go_through_the_retriever_end_to_end(pretrained_encoder, tmp_path):
    from transformers import BertTokenizer

    from xmodal import FashionBertProcessor
    from xmodal.hub import save_model_folder
    from xmodal.retrieval import FashionRetriever

    (tmp_path / "vocab").mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cup", "cat", "rocket"]
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = FashionBertProcessor(
        FashionBertImageProcessor(image_size=256, patch_grid=8), BertTokenizer.from_pretrained(tmp_path / "vocab"), max_text_length=8
    )
    save_model_folder(tmp_path / "model", pretrained_encoder, processor)
    retriever = FashionRetriever.from_pretrained(tmp_path / "model", precision="float32")
    files = [str(Path(skimage_data.data_dir) / name) for name in PHOTOS]  # paths, decoded by the retriever
    ranked = retriever.rank_images("a cup", files, top_k=3)
    assert len(ranked.indices) == 3 and set(ranked.indices.tolist()) <= set(range(len(files)))
    retriever.build_index(files)
    searched = retriever.search_images("a cup", top_k=len(files))
    assert sorted(searched.indices.tolist()) == list(range(len(files)))
    captions = retriever.rank_texts(files[0], ["a cup", "a cat", "a rocket"], top_k=3)
    assert sorted(captions.indices.tolist()) == [0, 1, 2] and torch.isfinite(captions.scores).all()
