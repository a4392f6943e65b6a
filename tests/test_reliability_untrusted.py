"""Issue 8, untrusted files: malicious config.json, pickled model weights, and trust_remote_code in our own code."""

import ast
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

import xmodal  # noqa: F401  (registers the Auto classes)
from xmodal.fashionbert.configuration_fashionbert import FashionBertConfig
from xmodal.fashionbert.modeling_fashionbert import FashionBertForPreTraining, FashionBertPreTrainedModel
from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
from xmodal.map_ivr.modeling_map_ivr import MapIvrModel

REPO = Path(__file__).resolve().parents[1]
TINY_FASHIONBERT = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=64, image_size=32, patch_grid=4, patch_encoder_type="pixels",
)  # fmt: skip
TINY_MAP_IVR = dict(
    image_feature_dim=8, video_feature_dim=8, appearance_dim=16, motion_dim=16, latent_dim=4,
    encoder_hidden_sizes=[16], decoder_hidden_sizes=[16], num_labels=3,
)  # fmt: skip


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def no_model_is_built(monkeypatch):
    """Fails the test if any FashionBERT or MAP-IVR model gets as far as its constructor (weights allocated)."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was constructed from a malicious config")

    monkeypatch.setattr(FashionBertPreTrainedModel, "__init__", refuse)
    monkeypatch.setattr(MapIvrModel, "__init__", refuse)


def write_config(folder: Path, config, **malicious) -> Path:
    config.save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    data.update(malicious)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "malicious, error, message",
    [
        ({"hidden_size": 10**9, "num_attention_heads": 1}, ValueError, "`hidden_size` is 1000000000, above the ceiling"),
        ({"num_hidden_layers": 10**7}, ValueError, "`num_hidden_layers` is 10000000, above the ceiling"),
        ({"vocab_size": 2**40}, ValueError, "`vocab_size` is 1099511627776, above the ceiling"),
        ({"image_size": 2**20, "patch_grid": 2}, ValueError, "`image_size` is 1048576, above the ceiling"),
        (
            {"hidden_size": 2**16, "num_attention_heads": 16, "num_hidden_layers": 1024, "intermediate_size": 2**18},
            ValueError,
            r"make a model of about 5.\d+e\+13 parameters, above the ceiling",
        ),
        (
            {"patch_encoder_type": "resnet", "patch_feature_dim": None,
             "patch_encoder_config": {"hidden_sizes": [2**16] * 4, "depths": [3] * 4}},
            ValueError,
            "parameters, above the ceiling",
        ),
        ({"num_hidden_layers": "x"}, StrictDataclassFieldValidationError, "num_hidden_layers.*expected int, got str"),
        ({"hidden_size": 32.0}, StrictDataclassFieldValidationError, "hidden_size.*expected int, got float"),
        ({"vocab_size": [99]}, StrictDataclassFieldValidationError, "vocab_size.*expected int, got list"),
        ({"patch_encoder_config": "evil"}, StrictDataclassFieldValidationError, "patch_encoder_config"),
        ({"vocab_size": -5}, ValueError, "`vocab_size` must be a positive integer"),
    ],
)
def test_malicious_fashionbert_config_is_refused_before_any_model_is_built(
    tmp_path, no_model_is_built, malicious, error, message
):
    folder = write_config(tmp_path, FashionBertConfig(**TINY_FASHIONBERT), **malicious)
    for load in (FashionBertConfig.from_pretrained, AutoConfig.from_pretrained, FashionBertForPreTraining.from_pretrained,
                 AutoModelForPreTraining.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(error, match=message):
            load(folder)


@pytest.mark.parametrize(
    "malicious, error, message",
    [
        ({"image_feature_dim": 10**9}, ValueError, "`image_feature_dim` is 1000000000, above the ceiling"),
        ({"num_samples": 10**9}, ValueError, "`num_samples` is 1000000000, above the ceiling"),
        ({"encoder_hidden_sizes": [16] * 1000}, ValueError, "`encoder_hidden_sizes` must have at most 64 sizes"),
        ({"decoder_hidden_sizes": [2**16] * 60}, ValueError, "parameters, above the ceiling"),
        ({"latent_dim": "x"}, StrictDataclassFieldValidationError, "latent_dim.*expected int, got str"),
        ({"lambda_v": "half"}, StrictDataclassFieldValidationError, "lambda_v"),
        ({"appearance_dim": 0, "motion_dim": 0}, ValueError, "`appearance_dim` must be >= 1"),
    ],
)
def test_malicious_map_ivr_config_is_refused_before_any_model_is_built(
    tmp_path, no_model_is_built, malicious, error, message
):
    folder = write_config(tmp_path, MapIvrConfig(**TINY_MAP_IVR), **malicious)
    for load in (MapIvrConfig.from_pretrained, AutoConfig.from_pretrained, MapIvrModel.from_pretrained,
                 AutoModel.from_pretrained):
        with pytest.raises(error, match=message):
            load(folder)


def test_ceilings_leave_real_configurations_alone():
    bert_base = FashionBertConfig()  # the paper's: BERT-base + ResNet-50 (137 M parameters; ResNet part a bound)
    assert 1.3e8 < bert_base._estimated_num_parameters() < 1e9
    config = FashionBertConfig(**TINY_FASHIONBERT)  # pixel patches: the estimate is exact
    assert config._estimated_num_parameters() == sum(p.numel() for p in FashionBertForPreTraining(config).parameters())
    config = MapIvrConfig(image_feature_dim=128, video_feature_dim=4096, num_labels=18)  # APIVR THUMOS14
    assert config._estimated_num_parameters() == sum(p.numel() for p in MapIvrModel(config).parameters())


@pytest.mark.parametrize("which", ["fashionbert", "map_ivr"])
def test_pickled_model_weights_never_run_code(tmp_path, which):
    """A model folder whose weights are a malicious `pytorch_model.bin`: transformers reads it with
    `weights_only=True` (refused, nothing runs); `use_safetensors=True` refuses the folder outright."""
    config, model_class = (
        (FashionBertConfig(**TINY_FASHIONBERT), FashionBertForPreTraining)
        if which == "fashionbert"
        else (MapIvrConfig(**TINY_MAP_IVR), MapIvrModel)
    )
    config.save_pretrained(tmp_path)
    sentinel = tmp_path / "pwned"
    torch.save({"weight": _Payload(sentinel)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        model_class.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="model.safetensors"):
        model_class.from_pretrained(tmp_path, use_safetensors=True)
    assert not sentinel.exists()


def _python_files():
    return sorted((REPO / "xmodal").rglob("*.py")) + [REPO / "train.py"]


def test_no_code_of_ours_passes_trust_remote_code_true():
    """Remote code runs only when the user asks for it: nothing in the package or train.py passes
    `trust_remote_code=True` (or a variable) on the user's behalf."""
    offending = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    offending.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offending == []
    assert len(_python_files()) > 20  # the scan saw the package
