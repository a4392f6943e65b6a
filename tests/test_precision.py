"""The training precision train.py picks: bf16 where the device computes it natively, float32 elsewhere."""

import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

import xmodal.precision as scoring_precision
from xmodal.training.precision import bf16_supported, default_mixed_precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "no")])
def test_cpu_precision_follows_its_bf16_units(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert default_mixed_precision("cpu") == expected
    assert bf16_supported(torch.device("cpu")) is (expected == "bf16")


def test_cpu_precision_without_torch_probes_reads_the_cpu_flags(monkeypatch, tmp_path):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    flags = {"with": "flags : fpu sse avx512f avx512_bf16\n", "without": "flags : fpu sse avx2\n"}
    real_open = open
    for name, text in flags.items():
        (tmp_path / name).write_text(text)
        monkeypatch.setattr(scoring_precision, "open", lambda path, *a, _n=name, **k: real_open(tmp_path / _n, *a, **k), raising=False)
        assert default_mixed_precision("cpu") == ("bf16" if name == "with" else "no")


@pytest.mark.parametrize("gpu_bf16, expected", [(True, "bf16"), (False, "no")])
def test_cuda_precision_follows_the_gpus_bf16_support(monkeypatch, gpu_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    assert default_mixed_precision("cuda") == expected


def test_other_devices_stay_in_float32():
    assert default_mixed_precision("meta") == "no"


def test_train_flag_auto_forced_and_under_accelerate_launch(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(AcceleratorState, "_shared_state", {})  # as in a fresh interpreter
    monkeypatch.setattr(train, "default_mixed_precision", lambda device: f"auto on {device}")
    device = "cuda" if torch.cuda.device_count() > 0 else "cpu"
    assert train.resolve_mixed_precision("auto") == f"auto on {device}"
    assert train.resolve_mixed_precision("no") == "no" and train.resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # `accelerate launch` decides
    assert train.resolve_mixed_precision("auto") is None
    assert train.resolve_mixed_precision("no") == "no"  # an explicit flag still wins
    assert train.parse_args([]).mixed_precision == "auto"
    with pytest.raises(SystemExit):
        train.parse_args(["--mixed_precision", "fp8"])


def test_auto_keeps_the_precision_of_this_process_accelerate_state(monkeypatch):
    """A second train.main() in one interpreter (a notebook, the in-process tests): accelerate's state cannot change,
    so `auto` keeps it instead of asking for another precision and failing."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(AcceleratorState, "_shared_state", {"_mixed_precision": "no"})
    assert train.resolve_mixed_precision("auto") is None
    assert train.resolve_mixed_precision("bf16") == "bf16"  # an explicit flag is passed on (accelerate refuses a change)


def test_training_attention_is_eager_only_for_bf16_on_a_cpu():
    from xmodal.training import training_attention

    assert training_attention("cpu", "bf16") == "eager"
    assert training_attention("cpu", "no") is None and training_attention("cpu", None) is None
    assert training_attention("cuda", "bf16") is None


def test_fashionbert_built_for_bf16_on_a_cpu_trains_with_eager_attention(monkeypatch, tmp_path):
    from xmodal.training import fashionbert as recipe

    monkeypatch.setattr(recipe, "training_device_type", lambda: "cpu")
    for precision_flag, expected in (("bf16", "eager"), ("no", "sdpa")):
        args = train.parse_args(["--output_dir", str(tmp_path), "--mixed_precision", precision_flag])
        args.mixed_precision = precision_flag  # what make_accelerator records
        model, _, _ = recipe.build_model(args, None)
        assert model.config._attn_implementation == expected
