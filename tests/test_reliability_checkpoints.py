"""Issue 8, faults and untrusted checkpoints: atomic checkpoints with a manifest, `latest` resolution, safe resuming.

In-process, on a tiny model with an AdamW optimiser and a scheduler prepared by a CPU `Accelerator` (the objects
`train.py` checkpoints); the end-to-end SIGKILL test is in test_reliability_resume.py.
"""

import json
import os
import pickle
import shutil
import stat

import pytest
import torch
from accelerate import Accelerator

from xmodal.training import (
    CHECKPOINT_MANIFEST,
    atomic_directory,
    checkpoint_problem,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def accelerator():
    """A fresh accelerator: one registers every model/optimizer it prepares, and `load_state` fills all of them."""
    return Accelerator(cpu=True)


def training_objects(accelerator, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler) -> None:
    loss = model(torch.randn(5, 4)).pow(2).sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def restamp_manifest(folder) -> None:
    """What an attacker publishing a checkpoint would do: a manifest that matches the planted files."""
    manifest = json.loads((folder / CHECKPOINT_MANIFEST).read_text())
    manifest["files"] = {name: (folder / name).stat().st_size for name in manifest["files"] if (folder / name).exists()}
    (folder / CHECKPOINT_MANIFEST).write_text(json.dumps(manifest))


def malicious_object(path):
    """An object whose unpickling calls `open(path, "w")`: a stand-in for `os.system`, with a visible effect."""
    reduce_to_open = lambda self: (open, (str(path), "w"))  # noqa: E731
    return type("Payload", (), {"__reduce__": reduce_to_open})()


@pytest.fixture
def saved(tmp_path):
    """Two checkpoints (steps 1 and 2) of a tiny training run, and the state right after step 2."""
    accelerator = Accelerator(cpu=True)
    objects = training_objects(accelerator)
    train_step(*objects)
    save_checkpoint(accelerator, tmp_path / "run", 1)
    train_step(*objects)
    path = save_checkpoint(accelerator, tmp_path / "run", 2)
    state = {k: v.clone() for k, v in objects[0].state_dict().items()}
    next_random = torch.rand(3)  # what the run draws right after the checkpoint
    return {"dir": tmp_path / "run", "path": path, "state": state, "next_random": next_random}


def test_checkpoint_has_a_manifest_of_every_file_and_no_temporary_folder_remains(saved):
    path = saved["path"]
    manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    assert manifest["step"] == 2
    files = {p.name: p.stat().st_size for p in path.iterdir() if p.name != CHECKPOINT_MANIFEST}
    assert manifest["files"] == files
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= set(files)
    assert sorted(p.name for p in saved["dir"].iterdir()) == ["step_1", "step_2"]
    assert checkpoint_problem(path) is None


def test_checkpoint_files_are_readable_by_every_user(accelerator, tmp_path):
    previous = os.umask(0o077)  # a strict umask: accelerate and safetensors would leave private files
    try:
        training_objects(accelerator)
        path = save_checkpoint(accelerator, tmp_path / "run", 1)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*") if p.is_file()}
    assert CHECKPOINT_MANIFEST in modes and set(modes.values()) == {0o644}, modes
    assert checkpoint_problem(path) is None


def test_total_limit_keeps_the_newest_and_removes_the_rest_whole(accelerator, saved):
    training_objects(accelerator)
    save_checkpoint(accelerator, saved["dir"], 3, total_limit=2)
    assert sorted(p.name for p in saved["dir"].iterdir()) == ["step_2", "step_3"]
    # Saving the same step again (the final checkpoint after a periodic one) swaps it in whole.
    save_checkpoint(accelerator, saved["dir"], 3, total_limit=2)
    assert sorted(p.name for p in saved["dir"].iterdir()) == ["step_2", "step_3"]
    assert checkpoint_problem(saved["dir"] / "step_3") is None


def test_latest_skips_temporary_missing_manifest_and_truncated_checkpoints(saved, caplog):
    run = saved["dir"]
    shutil.copytree(saved["path"], run / ".tmp-step_3")  # the atomic writer's name: never a checkpoint
    shutil.copytree(saved["path"], run / ".tmp-step_4-1234")
    shutil.copytree(saved["path"], run / "step_5")
    (run / "step_5" / CHECKPOINT_MANIFEST).unlink()  # files complete, manifest never written
    shutil.copytree(saved["path"], run / "step_6")
    manifest = json.loads((run / "step_6" / CHECKPOINT_MANIFEST).read_text())
    (run / "step_6" / CHECKPOINT_MANIFEST).write_text(json.dumps({**manifest, "step": 6}))
    with open(run / "step_6" / "model.safetensors", "r+b") as handle:  # an interrupted copy
        handle.truncate(10)
    shutil.copytree(saved["path"], run / "step_7")  # a copy of step 2 under another step's name
    (run / "step_8").mkdir()  # an empty folder
    with caplog.at_level("WARNING", logger="xmodal.training"):
        assert list_checkpoints(run) == [run / "step_1", run / "step_2"]
        assert resolve_checkpoint("latest", run) == run / "step_2"
    assert f"{run / 'step_5'}: no {CHECKPOINT_MANIFEST}" in caplog.text
    assert f"{run / 'step_6'}: model.safetensors has 10 bytes, the manifest says" in caplog.text
    assert f"{run / 'step_7'}: {CHECKPOINT_MANIFEST} is for step 2" in caplog.text
    with pytest.raises(ValueError, match=r"incomplete checkpoint, .*step_5: no checkpoint_complete.json"):
        resolve_checkpoint(str(run / "step_5"), run)
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_checkpoint(str(run / ".tmp-step_3"), run)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(run / "step_99"), run)
    assert resolve_checkpoint("latest", run / "nothing_here") is None


def test_load_checkpoint_restores_weights_optimizer_and_rng_exactly(accelerator, saved):
    model, optimizer, scheduler = training_objects(accelerator, seed=1)  # different weights
    torch.manual_seed(123)
    load_checkpoint(accelerator, saved["path"])
    for name, value in saved["state"].items():
        assert torch.equal(model.state_dict()[name], value), name
    assert torch.equal(torch.rand(3), saved["next_random"])
    assert scheduler.state_dict()["last_epoch"] == 2
    assert optimizer.state_dict()["state"][0]["step"].item() == 2


@pytest.mark.parametrize("victim", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
def test_a_malicious_state_pickle_is_refused_before_it_runs(accelerator, saved, tmp_path, victim):
    path = saved["path"]
    sentinel = tmp_path / "pwned"
    torch.save({"state": malicious_object(sentinel)}, path / victim)  # torch.save pickles the payload
    restamp_manifest(path)
    assert checkpoint_problem(path) is None  # the attacker's manifest matches
    training_objects(accelerator)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(accelerator, path)
    assert not sentinel.exists()


def test_pickled_model_weights_and_missing_rng_state_are_refused(accelerator, saved):
    path = saved["path"]
    training_objects(accelerator)
    os.replace(path / "random_states_0.pkl", path / "elsewhere.pkl")
    restamp_manifest(path)
    with pytest.raises(ValueError, match="random_states_0.pkl .*is missing"):
        load_checkpoint(accelerator, path)
    os.replace(path / "elsewhere.pkl", path / "random_states_0.pkl")
    torch.save(saved["state"], path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    restamp_manifest(path)
    with pytest.raises(ValueError, match=r"must be safetensors .*\['pytorch_model.bin'\]"):
        load_checkpoint(accelerator, path)
    (path / "pytorch_model.bin").unlink()
    restamp_manifest(path)
    with pytest.raises(ValueError, match="must be safetensors .*no model weights"):
        load_checkpoint(accelerator, path)


def test_load_checkpoint_refuses_an_incomplete_checkpoint(accelerator, saved):
    (saved["path"] / CHECKPOINT_MANIFEST).unlink()
    with pytest.raises(ValueError, match="cannot resume: incomplete checkpoint"):
        load_checkpoint(accelerator, saved["path"])


def test_atomic_directory_keeps_the_old_folder_when_the_write_fails(tmp_path):
    final = tmp_path / "final"
    with atomic_directory(final) as folder:
        (folder / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as folder:
            (folder / "a.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    assert (final / "a.txt").read_text() == "one"
