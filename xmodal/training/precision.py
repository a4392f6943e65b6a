"""The training precision train.py picks when `--mixed_precision` is left at `auto`: bf16 where the hardware computes
it natively (`xmodal.precision.bf16_supported`), float32 elsewhere; and the precision its evaluation scores in."""

from __future__ import annotations

import torch

from ..precision import bf16_supported

__all__ = ["bf16_supported", "default_mixed_precision", "scoring_precision", "training_attention", "training_device_type"]


def default_mixed_precision(device: torch.device | str) -> str:
    """accelerate's `mixed_precision` for `--mixed_precision auto`: "bf16" where `bf16_supported(device)`, else "no"."""
    return "bf16" if bf16_supported(device) else "no"


def scoring_precision(mixed_precision: str | None) -> str:
    """
    The `precision` train.py's evaluation scores in (`xmodal.precision`), from the training's accelerate
    `mixed_precision`: bf16 after bf16 training, float32 after float32 training ("no"), and "auto" after fp16 training
    (bf16 where the device has it: the scoring paths are measured in bf16 and float32 only).
    """
    return {"bf16": "bf16", "no": "float32", None: "float32"}.get(mixed_precision, "auto")


def training_device_type() -> str:
    """Where train.py's processes compute: "cuda" when there is a GPU, else "cpu" (as train.py's Accelerator)."""
    return "cuda" if torch.cuda.device_count() > 0 else "cpu"


def training_attention(device_type: str, mixed_precision: str | None) -> str | None:
    """
    The attention implementation to train a transformers model with, or None for its default (sdpa): "eager" on a CPU
    under bf16 autocast. There, PyTorch's sdpa runs its flash kernel, whose bf16 backward is slow on short sequences:
    measured on a 2-core CPU with AMX, a FashionBERT step (16 + 16 pairs of 48 tokens + 64 patches) takes 0.99 s
    with sdpa, 0.67 s with sdpa's math kernel and 0.56 s with eager attention; in float32 sdpa is the fastest (1.22
    s against 1.42 s). For inference sdpa stays the faster (bf16, 128 pairs: 3.0-3.8 ms per pair against 5.0-5.7 ms
    with eager), so train.py scores with sdpa. Same results either way, up to rounding.
    """
    return "eager" if device_type == "cpu" and mixed_precision == "bf16" else None
