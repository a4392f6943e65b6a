"""
The precision xmodal computes in: bf16 autocast where the hardware computes bf16 natively (a CUDA GPU with bf16, a CPU
with AVX-512-BF16 or AMX units), float32 elsewhere. Training (train.py's `--mixed_precision auto`) and every scoring
path (the protocol evaluation, the retrievers, MAP-IVR's gallery scoring) decide the same way, and each takes a
`precision` argument to force either.

Scoring under bf16 changes scores by rounding only. Measured on the quickstart's model on a 2-core CPU with AMX
(`python bench/precision_scoring.py --threads 2`): 3.0x the cross-encoder pairs per second; the protocol's
cross-encoder numbers unchanged, its first-stage and fused Rank@1 moved by up to 2.7 points either way (close cosine
ties flipped); 97.4 % of the items of 200 catalogue searches' top-10 lists shared between the two precisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "bf16_supported", "resolve_precision", "scoring_autocast"]

# What a `precision` argument accepts: "auto" = bf16 where `bf16_supported`, else float32.
PRECISIONS = ("auto", "bf16", "float32")


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


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """
    "bf16" or "float32": `precision` itself when forced, else (`"auto"`) bf16 where `bf16_supported(device)`.

    Raises:
        ValueError: `precision` is not one of `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}.")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "float32"
    return precision


@contextlib.contextmanager
def scoring_autocast(precision: str, device: torch.device | str) -> Iterator[str]:
    """
    Runs the block under bf16 autocast when `resolve_precision(precision, device)` is "bf16", in float32 otherwise
    (autocast explicitly off, also inside an enclosing autocast); yields the precision used.
    """
    resolved = resolve_precision(precision, device)
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):  # autocast elsewhere is not what this library measures: stay in float32
        resolved = "float32"
    with torch.autocast(device_type if device_type in ("cpu", "cuda") else "cpu", dtype=torch.bfloat16, enabled=resolved == "bf16"):
        yield resolved
