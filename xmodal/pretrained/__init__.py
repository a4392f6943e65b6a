"""
Pretrained image backbones shipped inside xmodal, so that FashionBERT's frozen CNN has real weights on a machine with no
model hub. Each is a transformers folder (safetensors + config, licences beside them) made by a conversion script in
this package from files on the package registry:

- `mobilenet_v2`: torchvision's MobileNetV2 ImageNet-1k weights (`IMAGENET1K_V1`, BSD-3-Clause) as a
  `MobileNetV2ForImageClassification`, by `python -m xmodal.pretrained.convert_mobilenet_v2` (its docstring has the
  command). 14 MB.
"""

from pathlib import Path


__all__ = ["PACKAGED_PATCH_ENCODERS", "packaged_patch_encoder"]

PACKAGED_PATCH_ENCODERS = {"mobilenet_v2": Path(__file__).resolve().parent / "mobilenet_v2_imagenet"}


def packaged_patch_encoder(patch_encoder_type: str) -> str | None:
    """The folder of the pretrained weights xmodal ships for this CNN family, or None when it ships none."""
    folder = PACKAGED_PATCH_ENCODERS.get(patch_encoder_type)
    return None if folder is None else str(folder)
