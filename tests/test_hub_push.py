"""Pushing to and loading from a Hub repository, against the local Hub-compatible endpoint (never the real Hub)."""

import inspect
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils._runtime import is_xet_available
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel

from xmodal.hub import push_folder_to_hub, save_model_folder
from xmodal.map_ivr.configuration_map_ivr import MapIvrConfig
from xmodal.map_ivr.feature_extraction_map_ivr import MapIvrFeatureExtractor
from xmodal.map_ivr.modeling_map_ivr import MapIvrModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import local_hub, read_blocked_log, subprocess_env  # noqa: E402, F401  (local_hub is a fixture)

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "xmodal-tester/tiny-map-ivr"
IMAGE_DIM, VIDEO_DIM, NUM_LABELS = 6, 8, 3
CODE_FILES = {"configuration_map_ivr.py", "modeling_map_ivr.py", "feature_extraction_map_ivr.py"}


def tiny_map_ivr(folder: Path) -> tuple[MapIvrModel, MapIvrFeatureExtractor]:
    """A tiny MAP-IVR model and fitted feature extractor, saved as a Hub-ready folder (with a model card)."""
    config = MapIvrConfig(
        image_feature_dim=IMAGE_DIM, video_feature_dim=VIDEO_DIM, appearance_dim=4, motion_dim=4, latent_dim=3,
        encoder_hidden_sizes=[5], decoder_hidden_sizes=[7], num_labels=NUM_LABELS, proposal_top_k=2, num_samples=4,
        initializer_range=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MapIvrModel(config).eval()
    rng = np.random.default_rng(0)
    extractor = MapIvrFeatureExtractor().fit(rng.normal(size=(10, IMAGE_DIM)), rng.normal(size=(10, 3, VIDEO_DIM)))
    card = ModelCard("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# tiny MAP-IVR\n")
    save_model_folder(folder, model, extractor, eval_results={"s_all/mAP@10": 0.5}, model_card=card)
    return model, extractor


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_clean(hub) -> None:
    assert hub.unhandled == [], f"clients called routes LocalHub does not implement: {hub.unhandled}"
    assert hub.errors == [] and hub.blocked == []


def test_saved_model_folder_is_readable_by_every_user(tmp_path):
    # safetensors writes model.safetensors 0600 and a strict umask makes everything private: the published folder
    # must still be world-readable (files 0644, folders 0755) for the other users of a shared machine.
    previous = os.umask(0o077)
    try:
        tiny_map_ivr(tmp_path / "tiny")
    finally:
        os.umask(previous)
    folder = tmp_path / "tiny"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    files = {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}
    assert "model.safetensors" in files and set(files.values()) == {0o644}, files


@pytest.mark.parametrize("upload_path", ["pipelined", "single_commit"])
def test_push_folder_to_hub_stores_the_folder_byte_for_byte(local_hub, tmp_path, monkeypatch, upload_path):
    # hf_xet installed -> upload_folder streams through the pipelined uploader; without it, one create_commit
    # (which also validates the README metadata). Both must work against the endpoint.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", upload_path == "single_commit")
    assert is_xet_available() == (upload_path == "pipelined")
    folder = tmp_path / "tiny"
    tiny_map_ivr(folder)
    expected = local_files(folder)
    hub_files = {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "eval_results.json"}
    assert hub_files | CODE_FILES <= set(expected)

    url = push_folder_to_hub(folder, REPO_ID, token=local_hub.token)

    head = local_hub.head(REPO_ID)
    assert re.fullmatch("[0-9a-f]{40}", head)
    assert url == f"{local_hub.endpoint}/{REPO_ID}/commit/{head}"
    assert local_hub.files(REPO_ID) == expected  # same paths, same bytes
    assert [c["summary"] for c in local_hub.commits(REPO_ID)] == ["initial commit", "Upload model trained with xmodal"]
    assert ("POST", "/api/validate-yaml", 200) in local_hub.requests  # README.md metadata checked before uploading

    # Pushing the unchanged folder again makes no commit (the endpoint reports the stored oids at preupload).
    assert push_folder_to_hub(folder, REPO_ID, token=local_hub.token) == url
    assert len(local_hub.commits(REPO_ID)) == 2

    # And the repository downloads back identically.
    snapshot = Path(snapshot_download(REPO_ID, cache_dir=tmp_path / "cache"))
    assert local_files(snapshot) == expected
    check_clean(local_hub)


def test_push_to_a_bare_repo_name_goes_to_the_token_owner_namespace(local_hub, tmp_path):
    folder = tmp_path / "tiny"
    tiny_map_ivr(folder)
    push_folder_to_hub(folder, "tiny-bare", token=local_hub.token)
    assert local_hub.files(f"{local_hub.user}/tiny-bare") == local_files(folder)


def test_network_guard_refuses_every_host_but_loopback(local_hub):
    # The guard refuses before any packet leaves (192.0.2.1 is TEST-NET-1; the name is never resolved).
    with socket.socket() as sock, pytest.raises(OSError, match="network disabled in tests"):
        sock.connect(("192.0.2.1", 443))
    with pytest.raises(OSError, match="network disabled in tests"):
        socket.getaddrinfo("huggingface.co", 443)
    assert local_hub.blocked == ["connect 192.0.2.1:443", "getaddrinfo huggingface.co:443"]
    local_hub.blocked.clear()
    socket.create_connection(("127.0.0.1", int(local_hub.endpoint.rsplit(":", 1)[1])), timeout=5).close()
    assert local_hub.blocked == []


def test_push_without_the_token_is_refused(local_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    folder = tmp_path / "tiny"
    tiny_map_ivr(folder)
    with pytest.raises(HfHubHTTPError, match="401"):
        push_folder_to_hub(folder, REPO_ID)
    assert not (local_hub.root / REPO_ID).exists()


def example_inputs() -> dict[str, np.ndarray]:
    """Raw features for 4 image/video pairs (bags of 1-3 proposals with class scores), as plain arrays."""
    rng = np.random.default_rng(1)
    arrays = {"images": rng.normal(size=(4, IMAGE_DIM)), "labels": np.array([0, 1, 2, 0]), "num_bags": np.array(4)}
    for i, k in enumerate((1, 3, 2, 3)):
        arrays[f"bag{i}"] = rng.normal(size=(k, VIDEO_DIM))
        arrays[f"scores{i}"] = rng.random(size=(k, NUM_LABELS))
    return arrays


def run_model(model, extractor, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Feature extractor -> model (eval mode); every input and output tensor, by name."""
    bags = [arrays[f"bag{i}"] for i in range(int(arrays["num_bags"]))]
    scores = [arrays[f"scores{i}"] for i in range(len(bags))]
    inputs = extractor(arrays["images"], bags, proposal_scores=scores)
    with torch.no_grad():
        output = model.eval()(**inputs, labels=torch.from_numpy(arrays["labels"]))
    return {**{f"input.{k}": v for k, v in inputs.items()}, **{f"output.{k}": v for k, v in output.items()}}


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    assert {"input.proposal_mask", "output.loss", "output.motion_code", "output.reconstruction"} <= set(expected)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_auto_classes_load_from_the_repo_id_with_xmodal_installed(local_hub, tmp_path):
    folder = tmp_path / "tiny"
    model, extractor = tiny_map_ivr(folder)
    push_folder_to_hub(folder, REPO_ID, token=local_hub.token)
    cache = tmp_path / "cache"

    # xmodal registers its classes with the Auto classes: no remote code needed; and since they are registered
    # explicitly, transformers prefers them to the repository's code even with trust_remote_code=True.
    loaded_extractor = AutoFeatureExtractor.from_pretrained(REPO_ID, cache_dir=cache)
    loaded = AutoModel.from_pretrained(REPO_ID, cache_dir=cache)
    assert type(loaded) is MapIvrModel and type(loaded_extractor) is MapIvrFeatureExtractor
    assert type(AutoModel.from_pretrained(REPO_ID, trust_remote_code=True, cache_dir=cache)) is MapIvrModel
    assert loaded_extractor.to_dict() == extractor.to_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    arrays = example_inputs()
    assert_same_tensors(run_model(model, extractor, arrays), run_model(loaded, loaded_extractor, arrays))
    # transformers resolves `main` to the commit once (model_info), then downloads at that commit.
    head = local_hub.head(REPO_ID)
    assert ("GET", f"/api/models/{REPO_ID}", 200) in local_hub.requests
    assert ("GET", f"/{REPO_ID}/resolve/{head}/model.safetensors", 200) in local_hub.requests
    # Optional files that do not exist are answered 404 EntryNotFound, like the Hub, and transformers moves on.
    assert ("HEAD", f"/{REPO_ID}/resolve/{head}/processor_config.json", 404) in local_hub.requests
    check_clean(local_hub)


# Run in a fresh interpreter where xmodal cannot be imported: the classes must come from the repository's code.
LOAD_WITH_REMOTE_CODE = r"""
import json, sys
sys.modules["xmodal"] = None  # `import xmodal` now raises ImportError
import numpy as np
from safetensors.torch import save_file
from transformers import AutoFeatureExtractor, AutoModel

repo_id, inputs_path, out_dir = sys.argv[1:]
sys.path.insert(0, out_dir)
from run_model import run_model

extractor = AutoFeatureExtractor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
tensors = run_model(model, extractor, dict(np.load(inputs_path, allow_pickle=False)))
save_file({k: v.clone().contiguous() for k, v in tensors.items()}, f"{out_dir}/tensors.safetensors")
classes = [f"{type(o).__module__}.{type(o).__name__}" for o in (model, model.config, extractor)]
xmodal_modules = [m for m in sys.modules if m.startswith("xmodal.")]
with open(f"{out_dir}/info.json", "w") as f:
    json.dump({"classes": classes, "xmodal": xmodal_modules}, f)
"""


def test_auto_classes_load_from_the_repo_id_with_remote_code_only(local_hub, tmp_path):
    folder = tmp_path / "tiny"
    model, extractor = tiny_map_ivr(folder)
    push_folder_to_hub(folder, REPO_ID, token=local_hub.token)
    arrays = example_inputs()
    np.savez(tmp_path / "inputs.npz", **arrays)
    child = tmp_path / "child"
    child.mkdir()
    (child / "run_model.py").write_text("import numpy as np\nimport torch\n\n" + inspect.getsource(run_model))
    (child / "load.py").write_text(LOAD_WITH_REMOTE_CODE)

    env = subprocess_env(local_hub, child)
    result = subprocess.run(
        [sys.executable, str(child / "load.py"), REPO_ID, str(tmp_path / "inputs.npz"), str(child)],
        cwd=child, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]
    assert read_blocked_log(child) == []

    info = json.loads((child / "info.json").read_text())
    assert info["xmodal"] == []
    for qualified, name in zip(info["classes"], ("MapIvrModel", "MapIvrConfig", "MapIvrFeatureExtractor")):
        # transformers' dynamic module for this repository and commit
        assert qualified.startswith("transformers_modules.") and qualified.endswith(f".{name}"), qualified
        assert f".{local_hub.head(REPO_ID)}." in qualified, qualified
    assert_same_tensors(run_model(model, extractor, arrays), load_file(child / "tensors.safetensors"))
    head = local_hub.head(REPO_ID)
    for code_file in CODE_FILES:
        assert ("GET", f"/{REPO_ID}/resolve/{head}/{code_file}", 200) in local_hub.requests
    check_clean(local_hub)


def test_train_py_pushes_the_final_folder_and_checkpoints(local_hub, tmp_path):
    output_dir = tmp_path / "run"
    command = [
        sys.executable, str(REPO / "train.py"), "--model_type", "map_ivr", "--synthetic_videos_per_class", "4",
        "--per_device_train_batch_size", "8", "--max_train_steps", "2", "--do_eval", "false",
        "--push_to_hub", "--hub_model_id", "user/tiny", "--hub_token", local_hub.token, "--push_checkpoints",
        "--output_dir", str(output_dir),
    ]  # fmt: skip
    env = subprocess_env(local_hub, tmp_path / "child")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert read_blocked_log(tmp_path / "child") == []

    stored = local_hub.files("user/tiny")
    final = local_files(output_dir / "final")
    assert {"model.safetensors", "config.json", "README.md", "preprocessor_config.json"} | CODE_FILES <= set(final)
    assert {k: v for k, v in stored.items() if not k.startswith("checkpoints/")} == final
    checkpoint = local_files(output_dir / "step_2")
    assert checkpoint and {f"checkpoints/step_2/{k}": v for k, v in checkpoint.items()} == {
        k: v for k, v in stored.items() if k.startswith("checkpoints/")
    }
    assert len(local_hub.commits("user/tiny")) == 3  # creation, final folder, checkpoint
    check_clean(local_hub)
