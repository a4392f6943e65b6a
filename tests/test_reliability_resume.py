"""Issue 8, faults: a run killed with SIGKILL and resumed from `latest` ends with the uninterrupted run's weights.

train.py runs MAP-IVR on a small precomputed-feature parquet (no synthetic rendering, so each run is a few seconds
after imports) with a constant learning rate (a resumed run that trained one step too many would show). One
thread per process: the runs are bit-for-bit reproducible on CPU and light on a shared machine.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xmodal.training import CHECKPOINT_MANIFEST, checkpoint_problem, list_checkpoints

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 10
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """64 training and 16 validation rows of 16-d image/video features, 4 classes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    for split, rows in (("train", 64), ("validation", 16)):
        labels = np.arange(rows) % 4
        image = (rng.normal(size=(rows, 16)) + labels[:, None]).astype(np.float32)
        video = (rng.normal(size=(rows, 16)) + labels[:, None]).astype(np.float32)
        table = pa.table({"image_features": list(image), "video_features": list(video), "label": labels})
        pq.write_table(table, folder / f"{split}.parquet")
    return folder


def train_command(features: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "train.py"), "--model_type", "map_ivr",
        "--train_file", str(features / "train.parquet"), "--validation_file", str(features / "validation.parquet"),
        "--per_device_train_batch_size", "8", "--max_train_steps", str(NUM_STEPS), "--lr_scheduler_type", "constant",
        "--num_warmup_steps", "0", "--do_eval", "false", "--logging_steps", "1", "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path, timeout: int = 300) -> str:
    process.wait(timeout=timeout)
    text = log.read_text()
    assert process.returncode == 0, f"train.py failed ({process.returncode}):\n{text[-5000:]}"
    return text


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "final" / "model.safetensors")


def assert_same_weights(expected: dict, actual: dict, context: str) -> None:
    assert expected.keys() == actual.keys(), context
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs ({context})"


def completed_steps(log_text: str) -> int:
    line = next(line for line in log_text.splitlines() if line.startswith("steps: "))
    return int(line.split()[1])


def prepare_half_written(good: Path, run_dir: Path) -> None:
    """Next to the complete checkpoint `good`: the atomic writer's temporary folder of the next step (half its
    files), a `step_<N+1>` folder with every file but no manifest, and a `step_<N+2>` folder whose optimizer state
    was truncated after its manifest was written (an interrupted copy or download)."""
    step = int(good.name.split("_")[1])
    shutil.copytree(good, run_dir / good.name)
    temporary = run_dir / f".tmp-step_{step + 1}"
    shutil.copytree(good, temporary)
    (temporary / CHECKPOINT_MANIFEST).unlink()
    (temporary / "optimizer.bin").unlink()
    no_manifest = run_dir / f"step_{step + 1}"
    shutil.copytree(good, no_manifest)
    (no_manifest / CHECKPOINT_MANIFEST).unlink()
    truncated = run_dir / f"step_{step + 2}"
    shutil.copytree(good, truncated)
    manifest = json.loads((truncated / CHECKPOINT_MANIFEST).read_text())
    (truncated / CHECKPOINT_MANIFEST).write_text(json.dumps({**manifest, "step": step + 2}))
    with open(truncated / "optimizer.bin", "r+b") as handle:
        handle.truncate(100)


@pytest.fixture(scope="module")
def runs(features, tmp_path_factory):
    """
    1. The uninterrupted run, and beside it a run killed with SIGKILL once its checkpoint of a random step appears.
       Checkpoints are written every step, so the kill lands anywhere in a later step, very often inside a
       checkpoint write (most of a step's time is the fsync of its checkpoint).
    2. Then, side by side: the killed run resumed with `latest`; a copy of its newest complete checkpoint among
       half-written ones (a kill during a checkpoint write, made deterministic), resumed with `latest`; and the
       uninterrupted run's last-step checkpoint alone (a kill while the final folder is written), resumed.
    """
    root = tmp_path_factory.mktemp("runs")
    kill_after = random.randint(2, NUM_STEPS - 4)
    full = start(train_command(features, root / "full"), root / "full.log")
    killed_dir = root / "killed"
    killed = start(train_command(features, killed_dir, "--checkpointing_steps", "1", "--checkpoints_total_limit", "3"),
                   root / "killed.log")
    deadline = time.monotonic() + 240
    while not (killed_dir / f"step_{kill_after}").is_dir():
        if killed.poll() is not None:
            pytest.fail(f"the run ended before step {kill_after}:\n{(root / 'killed.log').read_text()[-3000:]}")
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    finish(full, root / "full.log")
    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists(), "the run finished before the kill: nothing was interrupted"

    survivors = list_checkpoints(killed_dir)
    assert survivors and all(checkpoint_problem(c) is None for c in survivors)
    info = {
        "kill_after": kill_after,
        "leftovers": sorted(p.name for p in killed_dir.iterdir()),
        "latest": survivors[-1],
        "full": final_weights(root / "full"),
    }
    prepare_half_written(survivors[-1], root / "half_written")
    info["half_written_listing"] = list_checkpoints(root / "half_written")
    last = root / "full" / f"step_{NUM_STEPS}"
    assert checkpoint_problem(last) is None
    shutil.copytree(last, root / "last_step" / last.name)

    resume = ("--resume_from_checkpoint", "latest")
    processes = {
        "killed": start(train_command(features, killed_dir, *resume), root / "killed.resumed.log"),
        "half_written": start(train_command(features, root / "half_written", *resume), root / "half_written.log"),
        "last_step": start(train_command(features, root / "last_step", *resume), root / "last_step.log"),
    }
    logs = {name: root / ("killed.resumed.log" if name == "killed" else f"{name}.log") for name in processes}
    info["logs"] = {name: finish(process, logs[name]) for name, process in processes.items()}
    info["dirs"] = {"killed": killed_dir, "half_written": root / "half_written", "last_step": root / "last_step"}
    return info


def test_sigkill_at_a_random_step_then_resume_latest_gives_the_same_weights(runs):
    log, run_dir = runs["logs"]["killed"], runs["dirs"]["killed"]
    context = f"killed after step_{runs['kill_after']} appeared; left {runs['leftovers']}; latest {runs['latest'].name}"
    assert f"Resumed from checkpoint: {runs['latest']}" in log, context
    assert completed_steps(log) == NUM_STEPS, context
    assert_same_weights(runs["full"], final_weights(run_dir), context)


def test_half_written_checkpoints_are_never_latest_and_resume_still_matches(runs):
    log, run_dir = runs["logs"]["half_written"], runs["dirs"]["half_written"]
    good = run_dir / runs["latest"].name
    assert runs["half_written_listing"] == [good]
    assert f"Resumed from checkpoint: {good}" in log
    step = int(good.name.split("_")[1])
    assert f"Ignoring incomplete checkpoint {run_dir / f'step_{step + 1}'}: no {CHECKPOINT_MANIFEST}" in log
    assert f"{run_dir / f'step_{step + 2}'}: optimizer.bin has 100 bytes" in log
    assert completed_steps(log) == NUM_STEPS
    assert_same_weights(runs["full"], final_weights(run_dir), f"resumed from {good.name}")


def test_resuming_from_the_last_steps_checkpoint_trains_no_extra_step(runs):
    log, run_dir = runs["logs"]["last_step"], runs["dirs"]["last_step"]
    assert f"Resumed from checkpoint: {run_dir / f'step_{NUM_STEPS}'}" in log
    assert completed_steps(log) == NUM_STEPS
    assert [c.name for c in list_checkpoints(run_dir)] == [f"step_{NUM_STEPS}"]
    assert_same_weights(runs["full"], final_weights(run_dir), "resumed from the last checkpoint")
