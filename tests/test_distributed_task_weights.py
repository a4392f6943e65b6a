"""Eq. 6's task weights under data parallelism: with the per-task gradient statistics reduced across processes
(`FashionBertForPreTraining.task_statistics_reducer`, set by train.py through `connect_processes`), 2 CPU processes
(gloo) on halves of a batch use the weights of 1 process on the whole batch, and keep the same running means.

Stated tolerance: 1e-6 absolute on weights of about 1/3 (float32 forward passes over batches of 4 and of 8 rows round
differently); without the reduction the weights differ by more than 1e-2 on this batch.

Run as a script (`accelerate launch --multi_gpu --num_processes 2 tests/test_distributed_task_weights.py OUT`), this
file is the worker of the 2-process test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fashionbert_modeling import deterministic  # noqa: E402

from xmodal import FashionBertForPreTraining  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
TOLERANCE = 1e-6
RUNNING_MEANS = (0.03, 0.003, 0.003)  # about the norms of this batch: no task dominates, so the weights move


def config():
    return deterministic({"task_weighting": "gradient", "alignment_pooling": "cls"})  # cls: rows independent


def global_batch(seed: int) -> dict[str, torch.Tensor]:
    """8 rows; the first half (process 0) holds more MLM labels and masked patches than the second (process 1), so
    each process's loss averages over a different number of items."""
    generator = torch.Generator().manual_seed(seed)
    cfg = config()
    input_ids = torch.randint(3, cfg.vocab_size, (GLOBAL_BATCH, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[[1, 6], 5:] = 0
    labels = torch.full_like(input_ids, -100)
    labels[:4, 1:4] = input_ids[:4, 1:4]  # 3 per row in the first half
    labels[4:, 2] = input_ids[4:, 2]  # 1 per row in the second
    mpm_mask = torch.zeros(GLOBAL_BATCH, cfg.num_patches, dtype=torch.bool)
    mpm_mask[:4, :3] = True
    mpm_mask[4:, 5] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(GLOBAL_BATCH, 3, cfg.image_size, cfg.image_size, generator=generator),
        "labels": labels,
        "mpm_mask": mpm_mask,
        "alignment_labels": torch.tensor([0, 1, 0, 0, 0, 1, 1, 0]),
    }


def task_weights(rows: slice, reducer=None) -> dict[str, list]:
    """Two training forwards (the second uses the running means the first updated) on `rows` of the batches."""
    torch.manual_seed(0)
    model = FashionBertForPreTraining(config()).train()
    model.task_gradient_norm_mean.copy_(torch.tensor(RUNNING_MEANS))
    model.task_statistics_reducer = reducer
    weights = []
    for seed in (0, 1):
        batch = {name: value[rows] for name, value in global_batch(seed).items()}
        weights.append(model(**batch).task_weights.tolist())
    return {"weights": weights, "running_means": model.task_gradient_norm_mean.tolist()}


def worker(output: str) -> None:
    from accelerate import Accelerator

    from xmodal.training.common import process_sum

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    half = GLOBAL_BATCH // accelerator.num_processes
    rows = slice(accelerator.process_index * half, (accelerator.process_index + 1) * half)
    result = {"reduced": task_weights(rows, process_sum(accelerator)), "local": task_weights(rows)}
    gathered = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, result)
    if accelerator.is_main_process:
        Path(output).write_text(json.dumps({"num_processes": accelerator.num_processes, "ranks": gathered}))
    # Tear gloo down before the interpreter exits: left to exit, its threads sometimes abort a process (SIGABRT,
    # "terminate called without an active exception") after the work is done.
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("ddp") / "weights.json"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([*launcher, __file__, str(output)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(output.read_text())


def test_two_processes_use_the_task_weights_of_one_process_on_the_global_batch(two_processes):
    one = task_weights(slice(None))
    assert two_processes["num_processes"] == 2
    for rank in two_processes["ranks"]:
        for step, (a, b) in enumerate(zip(one["weights"], rank["reduced"]["weights"])):
            assert b == pytest.approx(a, abs=TOLERANCE), (step, a, b)
        assert rank["reduced"]["running_means"] == pytest.approx(one["running_means"], rel=1e-5)


def test_without_the_reduction_each_process_weighs_its_own_half(two_processes):
    """What the reduction fixes: local weights differ between the processes and from the global batch's."""
    one = task_weights(slice(None))
    local = [rank["local"]["weights"][0] for rank in two_processes["ranks"]]
    assert max(abs(a - b) for a, b in zip(*local)) > 1e-2
    assert all(max(abs(a - b) for a, b in zip(weights, one["weights"][0])) > 1e-2 for weights in local)


def test_a_sum_over_one_process_changes_nothing():
    """With one process the reduced statistics are the local ones: the same weights as no reducer."""
    plain, reduced = task_weights(slice(None)), task_weights(slice(None), reducer=lambda tensor: tensor.clone())
    torch.testing.assert_close(torch.tensor(reduced["weights"]), torch.tensor(plain["weights"]), rtol=0, atol=1e-7)
    torch.testing.assert_close(torch.tensor(reduced["running_means"]), torch.tensor(plain["running_means"]), rtol=1e-6, atol=0)


def test_every_process_joins_the_reduction_even_with_no_task_in_its_batch():
    """A process whose batch has no target must still call the collective, or the others would wait forever."""
    calls = []
    model = FashionBertForPreTraining(config()).train()
    model.task_statistics_reducer = lambda tensor: calls.append(tensor.clone()) or tensor * 0 + torch.tensor([[4.0, 1.0, 9.0], [2.0, 2.0, 3.0]], dtype=torch.float64)
    batch = global_batch(0)
    outputs = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], labels=torch.full_like(batch["input_ids"], -100),
                    mpm_mask=torch.zeros_like(batch["mpm_mask"]))  # fmt: skip
    assert len(calls) == 1 and calls[0].abs().sum() == 0  # nothing local to contribute
    assert (outputs.task_weights > 0).all()  # the other processes' tasks weigh this one's (zero) losses too


if __name__ == "__main__":
    worker(sys.argv[1])
