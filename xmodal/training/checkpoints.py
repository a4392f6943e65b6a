"""Pieces of the training loop that train.py imports: crash-safe checkpoints, safe resuming.

A checkpoint folder is written like every published folder (`xmodal.files`): under a temporary name beside its final
one, given modes 0644/0755, flushed to disk, then renamed in one step, so a run killed mid-write never leaves a
half-written folder under the final name. A checkpoint also carries a manifest (`checkpoint_complete.json`: its step
and the size of every file), written last: a `step_<N>` folder without it, or whose files do not match it (an
interrupted copy or download), is never picked as `latest` and is refused by name when given explicitly.

Resuming (`load_checkpoint`) reads model weights only from safetensors, and the optimizer, scheduler and RNG states
(pickles written by `accelerate`) only with `torch.load(weights_only=True)`, which rebuilds tensors, numbers, strings
and containers but never calls arbitrary code: a checkpoint downloaded from the Hub cannot run anything on load.

`atomic_directory` lives in `xmodal.files`; it is re-exported here for the code that imports it from this module.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from ..files import (
    atomic_directory,
    finish_directory,
    manifest_problem,
    read_manifest,
    remove_directory,
    temporary_path,
    write_manifest,
)

__all__ = [
    "CHECKPOINT_MANIFEST",
    "CHECKPOINT_PREFIX",
    "atomic_directory",
    "checkpoint_problem",
    "checkpoint_step",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MANIFEST = "checkpoint_complete.json"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimisation step a checkpoint folder named `step_<N>` was taken after."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (expected a name like '{CHECKPOINT_PREFIX}<step>')")
    return int(match.group(1))


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """
    Why the checkpoint folder `path` is not complete, or None when it is: its manifest is missing or unreadable,
    names another step, or lists a file that is missing or has another size (a truncated copy or download).
    """
    path = Path(path)
    manifest, problem = read_manifest(path, CHECKPOINT_MANIFEST)
    if problem is not None:
        return problem
    step = manifest.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return f"{path}: unreadable {CHECKPOINT_MANIFEST} (no step)"
    if _CHECKPOINT_NAME.match(path.name) and step != checkpoint_step(path):
        return f"{path}: {CHECKPOINT_MANIFEST} is for step {step}"
    return manifest_problem(path, manifest)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """
    Complete checkpoints under `output_dir`, oldest first. Temporary folders are never listed, nor `step_<N>`
    folders that fail `checkpoint_problem` (each is logged as a warning).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        if not (path.is_dir() and _CHECKPOINT_NAME.match(path.name)):
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            found.append(path)
        else:
            logger.warning("Ignoring incomplete checkpoint %s", problem)
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(resume_from_checkpoint: str, output_dir: str | os.PathLike) -> Path | None:
    """
    `"latest"` -> the newest complete checkpoint in `output_dir` (None when there is none); else that path, which
    must be a complete checkpoint folder (ValueError naming the problem otherwise).
    """
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder")
    checkpoint_step(path)  # validates the name
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint: incomplete checkpoint, {problem}")
    return path


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """
    `accelerator.save_state` into `output_dir/step_<step>`, atomically, with its manifest; keeps the newest
    `total_limit` checkpoints.

    Every process must call it (accelerate gathers state from all of them); only the main process renames.
    """
    final_path = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    temporary = temporary_path(final_path)  # one name for every process (no process id in it)
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(temporary, CHECKPOINT_MANIFEST, step=step)
        finish_directory(temporary, final_path)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                remove_directory(old)
    accelerator.wait_for_everyone()
    return final_path


def load_checkpoint(accelerator, checkpoint: str | os.PathLike) -> None:
    """
    `accelerator.load_state(checkpoint)` for a complete checkpoint, without unpickling anything unsafe.

    The model weights must be safetensors (`model*.safetensors`; a checkpoint with `pytorch_model*.bin` instead is
    refused), and the pickled optimizer / scheduler / RNG states are read with `weights_only=True` (accelerate's
    default, made explicit here): a pickle that names any other global raises `pickle.UnpicklingError` before any of
    it runs. This process's RNG state file is read first, the same way, and must load: accelerate would otherwise
    skip an unreadable one silently, and the resumed run would draw other random numbers than the uninterrupted one.

    Raises:
        ValueError: an incomplete checkpoint, pickled (non-safetensors) model weights, or a missing RNG state.
        pickle.UnpicklingError: a state pickle that holds anything but tensors, numbers, strings, containers and
            numpy arrays.
    """
    from accelerate.utils import load as weights_only_load
    checkpoint = Path(checkpoint)
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise ValueError(f"cannot resume: incomplete checkpoint, {problem}")
    pickled_weights = sorted(p.name for p in checkpoint.glob("pytorch_model*.bin"))
    if pickled_weights or not any(checkpoint.glob("model*.safetensors")):
        raise ValueError(
            f"cannot resume from {checkpoint}: model weights must be safetensors (model.safetensors), found "
            f"{pickled_weights or 'no model weights'}"
        )
    rng_state = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    if not rng_state.is_file():
        raise ValueError(f"cannot resume from {checkpoint}: {rng_state.name} (this process's RNG state) is missing")
    weights_only_load(rng_state, weights_only=True)  # raises where accelerate would only log "Could not load"
    accelerator.load_state(str(checkpoint), load_kwargs={"weights_only": True})
