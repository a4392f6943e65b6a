"""
The precision every scoring path runs in (`xmodal.precision`): bf16 autocast where the device computes bf16 natively,
float32 elsewhere, either forced by an argument; and bf16 scoring ranks a fixed example as float32 does.
"""

import numpy as np
import PIL.Image
import pytest
import torch

import xmodal.precision as scoring
from xmodal.fashionbert import pipeline_fashionbert
from xmodal.retrieval import ActivityRetriever, FashionRetriever
from xmodal.training.precision import scoring_precision

from tiny_fashionbert import golden_fashionbert_with_heads



def cpu_units(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "float32")])
def test_auto_follows_the_cpus_bf16_units_and_forcing_wins(monkeypatch, avx512_bf16, amx, expected):
    cpu_units(monkeypatch, avx512_bf16, amx)
    assert scoring.resolve_precision("auto", "cpu") == expected
    assert scoring.resolve_precision("bf16", "cpu") == "bf16" and scoring.resolve_precision("float32", "cpu") == "float32"
    # the remote-code pipeline carries its own copy of the check: it must agree
    assert pipeline_fashionbert._bf16_supported(torch.device("cpu")) is (expected == "bf16")
    with scoring.scoring_autocast("auto", "cpu") as used:
        assert used == expected and torch.is_autocast_enabled("cpu") is (expected == "bf16")


@pytest.mark.parametrize("gpu_bf16, expected", [(True, "bf16"), (False, "float32")])
def test_auto_on_cuda_follows_the_gpus_bf16(monkeypatch, gpu_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    assert scoring.resolve_precision("auto", "cuda") == expected
    assert pipeline_fashionbert._bf16_supported(torch.device("cuda")) is gpu_bf16


def test_float32_turns_an_enclosing_autocast_off_and_bad_values_are_named(monkeypatch):
    cpu_units(monkeypatch, True, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with scoring.scoring_autocast("float32", "cpu"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="`precision` must be one of 'auto', 'bf16', 'float32', got 'fp8'"):
        scoring.resolve_precision("fp8", "cpu")
    model, processor = golden_fashionbert_with_heads()
    with pytest.raises(ValueError, match="got 'half'"):
        FashionRetriever(model, processor, precision="half")


def test_training_evaluation_scores_in_the_training_precision():
    assert scoring_precision("bf16") == "bf16"
    assert scoring_precision("no") == "float32"
    assert scoring_precision("fp16") == "auto"


def coloured_images() -> list[PIL.Image.Image]:
    rng = np.random.default_rng(3)
    colours = [(200, 20, 20), (10, 10, 10), (240, 240, 240), (20, 60, 200), (120, 120, 120), (180, 40, 120)]
    return [PIL.Image.fromarray(np.clip(rng.normal(c, 25, (20, 20, 3)), 0, 255).astype(np.uint8)) for c in colours]


TEXTS = ["red dress", "black coat", "white silk dress", "blue wool coat"]


def test_bf16_and_float32_retrievers_rank_a_fixed_example_alike():
    model, processor = golden_fashionbert_with_heads()
    images = coloured_images()
    rankings = {}
    for precision in ("float32", "bf16"):
        retriever = FashionRetriever(model, processor, rerank_top_n=None, batch_size=4, precision=precision)
        assert retriever.precision == precision
        retriever.build_index(images)
        rankings[precision] = [retriever.search_images(text, top_k=6, first_stage_k=6) for text in TEXTS]
        rankings[precision] += [retriever.rank_texts(image, TEXTS, top_k=4) for image in images]
    for full, half in zip(rankings["float32"], rankings["bf16"]):
        assert half.indices.tolist() == full.indices.tolist()
        assert half.scores.dtype == torch.float32
        torch.testing.assert_close(half.scores, full.scores, rtol=0.05, atol=0.05)


def test_bf16_and_float32_activity_retrievers_rank_alike():
    from pathlib import Path

    golden = Path(__file__).resolve().parent / "fixtures" / "golden" / "map_ivr"
    rng = np.random.default_rng(0)
    images, videos = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(12, 8)).astype(np.float32)
    results = {p: ActivityRetriever.from_pretrained(golden, seed=1, precision=p).rank_videos(images[0], videos, top_k=5)
               for p in ("float32", "bf16")}  # fmt: skip
    assert results["bf16"].indices.tolist() == results["float32"].indices.tolist()
    assert results["bf16"].s_all.dtype == torch.float32
    torch.testing.assert_close(results["bf16"].s_all, results["float32"].s_all, rtol=0.05, atol=0.02)


def test_the_pipeline_takes_a_precision_and_ranks_alike_in_both(tmp_path):
    from transformers import pipeline

    from tiny_fashionbert import save_tiny_fashionbert_folders

    saved = save_tiny_fashionbert_folders(tmp_path)
    search = pipeline("fashion-retrieval", model=str(saved["root"] / "fashionbert_fused"), trust_remote_code=True, device="cpu")
    images = coloured_images()
    full = search(TEXTS[0], candidate_images=images, precision="float32")
    half = search(TEXTS[0], candidate_images=images, precision="bf16")
    assert [r["index"] for r in half] == [r["index"] for r in full]
    assert [r["score"] for r in half] == pytest.approx([r["score"] for r in full], abs=0.05)
    with pytest.raises(ValueError, match="`precision` must be one of 'auto', 'bf16', 'float32', got 'fp16'"):
        search(TEXTS[0], candidate_images=images, precision="fp16")
