"""The training precision train.py picks when `--mixed_precision` is left at `auto`: bf16 where the hardware computes
it natively, float32 elsewhere."""

from __future__ import annotations

import torch

__all__ = ["bf16_supported", "default_mixed_precision", "training_attention", "training_device_type"]


def _cpu_has_bf16_units() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512-BF16) or matrix units (AMX), which oneDNN uses under autocast."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None for probe in probes):
        return any(probe() for probe in probes if probe is not None)
    try:  # an older torch without the probes: the kernel's CPU flags (Linux)
        with open("/proc/cpuinfo") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_supported(device: torch.device | str) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU with bf16 (Ampere and later), or a CPU with
    AVX-512-BF16 or AMX units (where float32 is the slow path: measured 1.4x per training step, 2.8x for scoring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16_units()
    return False


def default_mixed_precision(device: torch.device | str) -> str:
    """accelerate's `mixed_precision` for `--mixed_precision auto`: "bf16" where `bf16_supported(device)`, else "no"."""
    return "bf16" if bf16_supported(device) else "no"


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
