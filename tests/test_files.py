"""xmodal.files: atomic folder writes with published modes, size manifests, local-path vs repo-id checks."""

import os
import stat

import pytest

from xmodal.files import (
    atomic_directory,
    file_fingerprint,
    local_or_repo_id,
    looks_local,
    manifest_problem,
    publish_modes,
    read_manifest,
    write_manifest,
)


def modes(folder) -> dict[str, int]:
    """`{relative path: permission bits}` of `folder` ("." itself) and everything under it."""
    out = {".": stat.S_IMODE(os.stat(folder).st_mode)}
    for path in folder.rglob("*"):
        out[path.relative_to(folder).as_posix()] = stat.S_IMODE(path.stat().st_mode)
    return out


@pytest.fixture
def strict_umask():
    previous = os.umask(0o077)  # what a cautious user or a temporary-file writer leaves: 0600 files, 0700 folders
    yield
    os.umask(previous)


def test_atomic_directory_publishes_files_0644_and_folders_0755(tmp_path, strict_umask):
    final = tmp_path / "out" / "final"
    with atomic_directory(final) as folder:
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        os.chmod(folder / "model.safetensors", 0o600)
        (folder / "sub").mkdir()
        (folder / "sub" / "notes.txt").write_text("hi")
        os.chmod(folder / "sub" / "notes.txt", 0o640)
    assert modes(final) == {".": 0o755, "model.safetensors": 0o644, "sub": 0o755, "sub/notes.txt": 0o644}
    assert sorted(p.name for p in final.parent.iterdir()) == ["final"]  # no temporary folder left


def test_atomic_directory_without_overwrite_refuses_and_keeps_the_old_folder(tmp_path):
    final = tmp_path / "final"
    with atomic_directory(final) as folder:
        (folder / "a.txt").write_text("one")
    with pytest.raises(FileExistsError):
        with atomic_directory(final, overwrite=False) as folder:
            (folder / "a.txt").write_text("two")
    assert (final / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_publish_modes_leaves_links_alone(tmp_path):
    (tmp_path / "target.txt").write_text("x")
    os.chmod(tmp_path / "target.txt", 0o600)
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    (folder / "link").symlink_to(tmp_path / "target.txt")
    publish_modes(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "target.txt").stat().st_mode) == 0o600  # outside the folder: untouched


def test_manifest_lists_every_file_and_detects_missing_and_truncated_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"12345")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("xy")
    write_manifest(tmp_path, "manifest.json", step=3)
    manifest, problem = read_manifest(tmp_path, "manifest.json")
    assert problem is None and manifest == {"step": 3, "files": {"a.bin": 5, "sub/b.txt": 2}}
    assert manifest_problem(tmp_path, manifest) is None
    (tmp_path / "a.bin").write_bytes(b"12")
    assert manifest_problem(tmp_path, manifest) == f"{tmp_path}: a.bin has 2 bytes, the manifest says 5 (truncated?)"
    (tmp_path / "sub" / "b.txt").unlink()
    assert "a.bin has 2 bytes" in manifest_problem(tmp_path, manifest)  # the first problem, in name order
    (tmp_path / "a.bin").write_bytes(b"12345")
    assert manifest_problem(tmp_path, manifest) == f"{tmp_path}: sub/b.txt is missing"
    assert read_manifest(tmp_path, "other.json") == (None, f"{tmp_path}: no other.json (an interrupted write or copy)")
    (tmp_path / "manifest.json").write_text("[1, 2]")
    manifest, problem = read_manifest(tmp_path, "manifest.json")
    assert manifest is None and "unreadable manifest.json" in problem


def test_local_paths_and_repo_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("owner/name") and local_or_repo_id("owner/name") == "owner/name"
    assert looks_local("outputs/fashionbert/final") and looks_local("./model") and looks_local(tmp_path / "missing")
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").mkdir()
    assert looks_local("owner/name")  # an existing folder wins over the repo id it could also be
    assert local_or_repo_id("~/x") == os.path.expanduser("~/x")
    (tmp_path / "f.txt").write_text("one")
    before = file_fingerprint("f.txt")
    assert before == file_fingerprint(tmp_path / "f.txt")
    (tmp_path / "f.txt").write_text("longer")
    assert file_fingerprint("f.txt") != before
