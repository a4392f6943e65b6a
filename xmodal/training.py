"""Pieces of the training loop that train.py imports: crash-safe checkpoints and folder writes.

A checkpoint or output folder is first written under a temporary name beside its final one, flushed to disk, then
renamed in one step, so a run killed mid-write never leaves a half-written folder under the final name: `latest`
only ever finds complete checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CHECKPOINT_PREFIX",
    "atomic_directory",
    "checkpoint_step",
    "list_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_PREFIX = "step_"
_TEMPORARY_PREFIX = ".tmp-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def _fsync_tree(path: Path) -> None:
    """Flush every file under `path` (and the folders themselves) to disk before the rename makes them visible."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        directory = os.open(root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """
    Yields a temporary folder beside `final_path`; on success it is flushed and renamed to `final_path`.

    On an exception the temporary folder is removed and whatever was at `final_path` before is left untouched.
    With `overwrite`, an existing `final_path` is replaced only once the new folder is complete.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = final_path.parent / f"{_TEMPORARY_PREFIX}{final_path.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        _fsync_tree(temporary)
        if final_path.exists():
            if not overwrite:
                raise FileExistsError(f"{final_path} already exists")
            previous = final_path.parent / f"{_TEMPORARY_PREFIX}{final_path.name}-old-{os.getpid()}"
            os.replace(final_path, previous)
            os.replace(temporary, final_path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(temporary, final_path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimisation step a checkpoint folder named `step_<N>` was taken after."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (expected a name like '{CHECKPOINT_PREFIX}<step>')")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first (temporary, half-written folders are never listed)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(resume_from_checkpoint: str, output_dir: str | os.PathLike) -> Path | None:
    """`"latest"` -> the newest complete checkpoint in `output_dir` (None when there is none); else that path."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder")
    checkpoint_step(path)  # validates the name
    return path


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """
    `accelerator.save_state` into `output_dir/step_<step>`, atomically; keeps the newest `total_limit` checkpoints.

    Every process must call it (accelerate gathers state from all of them); only the main process renames.
    """
    final_path = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    temporary = final_path.parent / f"{_TEMPORARY_PREFIX}{final_path.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(temporary)
        shutil.rmtree(final_path, ignore_errors=True)
        os.replace(temporary, final_path)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final_path
