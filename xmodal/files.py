"""File-system helpers shared by training (checkpoints), the Hub folders and retrieval: crash-safe folder writes,
fsync, readable modes for published files, and size manifests.

A folder is written under a temporary name beside its final one (`temporary_path`), flushed to disk (`fsync_tree`),
given the modes of a published folder (`publish_modes`: files 0644, folders 0755, whatever the writer's umask or
temporary-file defaults were) and renamed in one step (`replace_directory`), so a run killed mid-write never leaves a
half-written folder under the final name. `atomic_directory` does all of this around a `with` block.

A manifest (`write_manifest`) records the size in bytes of every file of a folder, written last; `manifest_problem`
says whether the folder still matches it (an interrupted copy or download does not).

Paths given to loaders: `looks_local` tells a local folder from a Hub repo id, `local_or_repo_id` gives what
`from_pretrained` should get, and `file_fingerprint` identifies an unchanged file cheaply (for content-keyed caches).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "FILE_MODE",
    "FOLDER_MODE",
    "TEMPORARY_PREFIX",
    "atomic_directory",
    "file_fingerprint",
    "finish_directory",
    "fsync_directory",
    "fsync_tree",
    "local_or_repo_id",
    "looks_local",
    "manifest_problem",
    "publish_modes",
    "read_manifest",
    "remove_directory",
    "replace_directory",
    "temporary_path",
    "write_manifest",
]

TEMPORARY_PREFIX = ".tmp-"
FILE_MODE = 0o644  # published files: readable by every user of a shared machine, writable by the owner
FOLDER_MODE = 0o755


def temporary_path(final_path: str | os.PathLike, tag: str = "") -> Path:
    """The temporary name beside `final_path`: `.tmp-<name>` plus `-<tag>` when given (e.g. the process id)."""
    final_path = Path(final_path)
    return final_path.parent / f"{TEMPORARY_PREFIX}{final_path.name}{f'-{tag}' if tag else ''}"


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush every file under `path` (and the folders themselves) to disk before a rename makes them visible."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(root)


def publish_modes(path: str | os.PathLike) -> None:
    """
    Give `path` and everything under it the modes of a published folder: files 0644, folders 0755 (some writers,
    e.g. safetensors, create files 0600, which other users of a shared machine could not read). Links are left alone.
    """
    path = Path(path)
    os.chmod(path, FOLDER_MODE if path.is_dir() else FILE_MODE)
    for root, folders, files in os.walk(path):
        for name in folders:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), FOLDER_MODE)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), FILE_MODE)


def replace_directory(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """
    Renames `source` to `destination` and flushes the rename; an existing `destination` is first renamed aside, then
    removed once the new folder is in place (a kill between the two renames leaves both under temporary names).
    """
    source, destination = Path(source), Path(destination)
    if destination.exists():
        previous = temporary_path(destination, f"old-{os.getpid()}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(destination, previous)
        os.replace(source, destination)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(source, destination)
    fsync_directory(destination.parent)


def remove_directory(path: str | os.PathLike) -> None:
    """Removes a folder by renaming it to a temporary name first: a kill mid-removal leaves no partial folder."""
    doomed = temporary_path(path, f"removed-{os.getpid()}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def finish_directory(temporary: str | os.PathLike, final_path: str | os.PathLike) -> None:
    """Publish a complete temporary folder: modes 0644/0755, flushed to disk, then renamed to `final_path`."""
    publish_modes(temporary)
    fsync_tree(temporary)
    replace_directory(temporary, final_path)


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """
    Yields a temporary folder beside `final_path`; on success it gets modes 0644 (files) / 0755 (folders), is
    flushed and renamed to `final_path`.

    On an exception the temporary folder is removed and whatever was at `final_path` before is left untouched.
    With `overwrite`, an existing `final_path` is replaced only once the new folder is complete; without it, an
    existing `final_path` is a `FileExistsError`.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(final_path, str(os.getpid()))
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        if final_path.exists() and not overwrite:
            raise FileExistsError(f"{final_path} already exists")
        finish_directory(temporary, final_path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def write_manifest(folder: str | os.PathLike, name: str, **fields: Any) -> Path:
    """
    Writes `folder/name`: `fields` plus `"files"`, the size in bytes of every file under `folder` (relative POSIX
    paths). Write it last, once the folder is otherwise complete. Returns its path.
    """
    folder = Path(folder)
    files = {}
    for root, _, names in os.walk(folder):
        for file_name in names:
            path = Path(root, file_name)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    manifest = folder / name
    manifest.write_text(json.dumps({**fields, "files": files}, indent=1, sort_keys=True))
    return manifest


def read_manifest(folder: str | os.PathLike, name: str) -> tuple[dict | None, str | None]:
    """
    `(manifest, None)` for a readable manifest `folder/name` (a JSON object with a `"files"` mapping), else
    `(None, why)`: missing or unreadable.
    """
    path = Path(folder) / name
    if not path.is_file():
        return None, f"{folder}: no {name} (an interrupted write or copy)"
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest["files"], dict):
            raise TypeError("unexpected manifest layout")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{folder}: unreadable {name} ({type(error).__name__}: {error})"
    return manifest, None


def manifest_problem(folder: str | os.PathLike, manifest: dict) -> str | None:
    """Why `folder` does not match `manifest` (a file it lists is missing or has another size), or None."""
    folder = Path(folder)
    for name, size in sorted(manifest["files"].items()):
        file = folder / name
        if not file.is_file():
            return f"{folder}: {name} is missing"
        if file.stat().st_size != size:
            return f"{folder}: {name} has {file.stat().st_size} bytes, the manifest says {size} (truncated?)"
    return None


def looks_local(path: str | os.PathLike) -> bool:
    """
    Whether `path` names a local file or folder rather than a Hub repo id (`owner/name`): it exists, is absolute,
    starts with `.` or `~`, or has more than one `/`.
    """
    text = str(path)
    local = Path(text).expanduser()
    return local.exists() or local.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1


def local_or_repo_id(path: str | os.PathLike) -> str:
    """`path` as `from_pretrained` wants it: the expanded local path when `looks_local`, else the repo id as given."""
    return str(Path(str(path)).expanduser()) if looks_local(path) else str(path)


def file_fingerprint(path: str | os.PathLike) -> str:
    """Equal for the same unchanged file: its absolute path, modification time (ns) and size."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_mtime_ns}:{stat.st_size}"
