"""
Remote code in an interpreter where xmodal is truly absent: what a Hub user without xmodal gets.

`tests/test_hub_push.py` runs its remote-code child with the development environment (the editable install's
`__editable__` finder, the `xmodal` dist-info, the inherited `PYTHONPATH`) and hides xmodal by poisoning
`sys.modules["xmodal"]`, for MAP-IVR only. Here the child is `python -I -S` (no `PYTHONPATH`, no user site, no site
packages, no script or working directory on `sys.path`) given one site directory: symlinks to every entry of this
environment's site-packages except xmodal's package, metadata and editable-install hooks, processed by
`site.addsitedir` (so the other packages' `.pth` files still apply). Its working directory is a temporary folder
outside the repository. In it, FashionBERT (processor, image processor, encoder, pretraining model, retrieval model)
and MAP-IVR (feature extractor, model, scores) load from saved folders with `trust_remote_code=True` and must
reproduce this process's outputs bit for bit; and transformers' own entry point,
`pipeline("fashion-retrieval", model=folder_or_repo_id, trust_remote_code=True)`, ranks images for texts and texts
for images as xmodal's `score_pairs` does.
"""

import inspect
import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from xmodal import (
    FashionBertForImageTextRetrieval,
    FashionBertModel,
    MapIvrConfig,
    MapIvrFeatureExtractor,
    MapIvrModel,
)
from xmodal.hub import AUTO_MAPS, push_folder_to_hub, save_model_folder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import local_hub  # noqa: E402, F401  (a fixture)
from tiny_fashionbert import FUSED, save_tiny_fashionbert_folders, score_matrix  # noqa: E402

# Exactness tests: rankings compared with float32 brute force (bf16 scoring has its own tests).
pytestmark = pytest.mark.usefixtures("float32_scoring")

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["red silk sleeveless dress", "black wool coat, zebra"]
SCORE_SEED = 7
CHILD_TIMEOUT = 300


# ----------------------------------------------------------------------------- the same pipeline in both processes
# Shipped to the child as source (inspect.getsource): they use only torch, numpy, PIL and the objects they are given.


def run_fashionbert(processor, image_processor, pretraining, encoder, retrieval, retrieval_encoder, images, texts):
    """Processor -> models (eval, no grad); every tensor by name."""
    pil_images = [PIL.Image.fromarray(image) for image in images]
    inputs = dict(processor(images=pil_images, text=texts, return_tensors="pt"))
    pixels = image_processor(pil_images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pretrained = pretraining.eval()(**inputs)
        encoded = encoder.eval()(**inputs)
        retrieved = retrieval.eval()(**inputs)
        retrieval_encoded = retrieval_encoder.eval()(**inputs)
    return {
        **{f"input.{k}": v for k, v in inputs.items()},
        "image_processor.pixel_values": pixels,
        "pretraining.mlm_logits": pretrained.mlm_logits,
        "pretraining.mpm_logits": pretrained.mpm_logits,
        "pretraining.tia_logits": pretrained.tia_logits,
        "encoder.last_hidden_state": encoded.last_hidden_state,
        "encoder.pooler_output": encoded.pooler_output,
        "retrieval.logits": retrieved.logits,
        "retrieval_encoder.pooler_output": retrieval_encoded.pooler_output,
    }


def run_map_ivr(extractor, model, raw):
    """Feature extractor -> model forward (eval) and retrieval scores with seeded motion codes; every tensor by name."""
    num_bags = sum(1 for k in raw if k.startswith("bag_"))
    inputs = extractor(
        raw["images"].numpy(),
        [raw[f"bag_{i}"].numpy() for i in range(num_bags)],
        proposal_scores=[raw[f"scores_{i}"].numpy() for i in range(num_bags)],
    )
    with torch.no_grad():
        output = model.eval()(**inputs, labels=raw["labels"])
    gallery = {k: inputs[k] for k in ("video_features", "proposal_scores", "proposal_mask")}
    generator = torch.Generator().manual_seed(int(raw["score_seed"]))
    scores = model.score(inputs["image_features"], **gallery, generator=generator)
    return {
        **{f"input.{k}": v for k, v in inputs.items()},
        **{f"output.{k}": v for k, v in output.items()},
        **{f"score.{k}": v for k, v in scores.items()},
    }


# ----------------------------------------------------------------------------- the child interpreter

CHILD_PRELUDE = r"""
import importlib.metadata, importlib.util, json, os, site, sys
site_dir, mode, out_dir = sys.argv[1:4]
site.addsitedir(site_dir)  # the isolated site directory, with its remaining .pth files (python -S skipped site)

def report_environment():
    try:
        import xmodal  # noqa: F401
        import_error = None
    except ImportError as error:
        import_error = f"{type(error).__name__}: {error}"
    try:
        importlib.metadata.distribution("xmodal")
        metadata_found = True
    except importlib.metadata.PackageNotFoundError:
        metadata_found = False
    return {
        "import_error": import_error,
        "find_spec": importlib.util.find_spec("xmodal") is not None,
        "metadata_found": metadata_found,
        "sys_path": sys.path,
        "paths_with_xmodal": [p for p in sys.path if os.path.exists(os.path.join(p or ".", "xmodal"))],
        "cwd": os.getcwd(),
        "flags": {"isolated": sys.flags.isolated, "no_site": sys.flags.no_site},
        "meta_path": [type(f).__name__ if not isinstance(f, type) else f.__name__ for f in sys.meta_path],
    }

def isolated_environment():
    # The scripts that load folders run only where xmodal is truly absent.
    environment = report_environment()
    if environment["import_error"] is None:
        sys.exit("xmodal is importable in the isolated interpreter")
    return environment

def write_report(report):
    with open(os.path.join(out_dir, f"{mode}.json"), "w") as f:
        json.dump(report, f)
"""

CHILD_PROBE = CHILD_PRELUDE + r"""
write_report(report_environment())
"""

CHILD_LOAD = CHILD_PRELUDE + r"""
# PIPELINE FUNCTIONS

environment = isolated_environment()
import numpy as np
import PIL.Image
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModel, AutoModelForPreTraining, AutoProcessor,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.utils.hub import HF_MODULES_CACHE

torch.set_num_threads(1)
fashionbert_dir, retrieval_dir, map_ivr_dir, inputs_path = sys.argv[4:8]
raw = load_file(inputs_path)
with safe_open(inputs_path, "pt") as f:
    texts = json.loads(f.metadata()["texts"])

config = AutoConfig.from_pretrained(fashionbert_dir, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(fashionbert_dir, trust_remote_code=True)
image_processor = AutoImageProcessor.from_pretrained(fashionbert_dir, trust_remote_code=True)
pretraining = AutoModelForPreTraining.from_pretrained(fashionbert_dir, trust_remote_code=True)
encoder = AutoModel.from_pretrained(fashionbert_dir, trust_remote_code=True)
# No Auto class for image-text retrieval: the class from the folder's own code.
retrieval_class = get_class_from_dynamic_module("modeling_fashionbert.FashionBertForImageTextRetrieval", retrieval_dir)
retrieval = retrieval_class.from_pretrained(retrieval_dir)
retrieval_encoder = AutoModel.from_pretrained(retrieval_dir, trust_remote_code=True)
images = [raw[f"fashion.image_{i}"].numpy() for i in range(len(texts))]
tensors = {f"fashionbert.{k}": v for k, v in run_fashionbert(
    processor, image_processor, pretraining, encoder, retrieval, retrieval_encoder, images, texts).items()}

map_ivr_config = AutoConfig.from_pretrained(map_ivr_dir, trust_remote_code=True)
extractor = AutoFeatureExtractor.from_pretrained(map_ivr_dir, trust_remote_code=True)
map_ivr = AutoModel.from_pretrained(map_ivr_dir, trust_remote_code=True)
map_ivr_raw = {k.removeprefix("map_ivr."): v for k, v in raw.items() if k.startswith("map_ivr.")}
tensors.update({f"map_ivr.{k}": v for k, v in run_map_ivr(extractor, map_ivr, map_ivr_raw).items()})
tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
save_file(tensors, os.path.join(out_dir, "outputs.safetensors"))

objects = {
    "config": config, "processor": processor, "image_processor": image_processor, "pretraining": pretraining,
    "encoder": encoder, "retrieval": retrieval, "retrieval_encoder": retrieval_encoder,
    "map_ivr_config": map_ivr_config, "extractor": extractor, "map_ivr": map_ivr,
    "processor.image_processor": processor.image_processor,
}
classes = {
    name: {"name": type(o).__name__, "module": type(o).__module__, "file": sys.modules[type(o).__module__].__file__}
    for name, o in objects.items()
}
modules = list(sys.modules.values())
loaded_files = sorted({os.path.realpath(m.__file__) for m in modules if getattr(m, "__file__", None)})
write_report({
    **report_environment(),
    "classes": classes,
    "xmodal_modules": [m for m in sys.modules if m == "xmodal" or m.startswith("xmodal.")],
    "loaded_files": loaded_files,
    "hf_modules_cache": HF_MODULES_CACHE,
})
"""


def _site_package_dirs() -> list[Path]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    unique = []
    for d in dirs:
        if Path(d).is_dir() and Path(d).resolve() not in [u.resolve() for u in unique]:
            unique.append(Path(d))
    return unique


def _exposes_xmodal(entry: Path) -> bool:
    """xmodal's package, metadata, editable-install finder and `.pth` hooks; caches of top-level modules."""
    name = entry.name.lower()
    if name.startswith(("xmodal", "__editable__")) or name == "__pycache__":
        return True
    if name.endswith((".pth", ".egg-link")):
        text = entry.read_text(errors="replace")
        return str(REPO) in text or "xmodal" in text.lower()
    return False


@pytest.fixture(scope="session")
def isolated_site(tmp_path_factory) -> Path:
    """A site directory of symlinks to this environment's site-packages entries, minus everything xmodal."""
    target = tmp_path_factory.mktemp("isolated_site")
    for directory in _site_package_dirs():
        for entry in sorted(directory.iterdir()):
            if not _exposes_xmodal(entry) and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    assert (target / "torch").exists() and (target / "transformers").exists()
    assert not any(_exposes_xmodal(entry) for entry in target.iterdir())
    return target


def run_child(script: str, site_dir: Path, mode: str, workdir: Path, *args: str, hub=None) -> dict:
    """
    Runs `script` with `python -I -S` in `workdir` (outside the repository); returns its JSON report. Offline, or
    talking only to the local Hub endpoint `hub` when given.
    """
    assert REPO not in workdir.resolve().parents, "the child's working directory must be outside the repository"
    (workdir / f"{mode}.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(
        HF_HOME=str(workdir / "hf_home"),  # a fresh user: its own cache of remote-code modules
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if hub is not None:
        env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_TOKEN=hub.token or "",
                   NO_PROXY="127.0.0.1,localhost")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(workdir / f"{mode}.py"), str(site_dir), mode, str(workdir), *args],
        cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, f"child failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return json.loads((workdir / f"{mode}.json").read_text())


def assert_isolated(report: dict, site_dir: Path) -> None:
    assert report["import_error"] is not None and report["import_error"].startswith("ModuleNotFoundError")
    assert report["find_spec"] is False and report["metadata_found"] is False
    assert report["paths_with_xmodal"] == []
    assert report["flags"] == {"isolated": 1, "no_site": 1}
    assert "_EditableFinder" not in report["meta_path"]
    real_site_dirs = {str(d.resolve()) for d in _site_package_dirs()}
    assert not real_site_dirs & {str(Path(p).resolve()) for p in report["sys_path"] if p}
    assert str(site_dir) in report["sys_path"]
    assert str(REPO) not in [str(Path(p).resolve()) for p in report["sys_path"] if p]
    assert REPO not in Path(report["cwd"]).resolve().parents


def test_xmodal_cannot_be_imported_in_the_isolated_interpreter(isolated_site, tmp_path):
    assert_isolated(run_child(CHILD_PROBE, isolated_site, "probe", tmp_path), isolated_site)


# ----------------------------------------------------------------------------- tiny saved folders


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """Tiny FashionBERT (pretraining folder, and a retrieval folder from the same weights) and MAP-IVR folders."""
    root = tmp_path_factory.mktemp("saved")
    fashionbert = save_tiny_fashionbert_folders(root)
    processor, pretraining, retrieval = fashionbert["processor"], fashionbert["pretraining"], fashionbert["retrieval"]
    fused = fashionbert["fused"]

    map_ivr_config = MapIvrConfig(
        image_feature_dim=6, video_feature_dim=8, appearance_dim=4, motion_dim=4, latent_dim=3,
        encoder_hidden_sizes=[5], decoder_hidden_sizes=[7], num_labels=3, proposal_top_k=2, num_samples=4,
        initializer_range=0.5,
    )  # fmt: skip
    torch.manual_seed(1)
    map_ivr = MapIvrModel(map_ivr_config).eval()
    rng = np.random.default_rng(0)
    extractor = MapIvrFeatureExtractor().fit(rng.normal(size=(10, 6)), rng.normal(size=(10, 3, 8)))
    save_model_folder(root / "map_ivr", map_ivr, extractor)
    return {
        "root": root, "processor": processor, "pretraining": pretraining, "retrieval": retrieval, "fused": fused,
        "map_ivr": map_ivr, "extractor": extractor,
    }  # fmt: skip


def raw_inputs() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(2)
    raw = {
        "fashion.image_0": torch.from_numpy(rng.integers(0, 256, size=(20, 12, 3), dtype=np.uint8)),
        "fashion.image_1": torch.from_numpy(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)),
        "map_ivr.images": torch.from_numpy(rng.normal(size=(3, 6))),
        "map_ivr.labels": torch.tensor([0, 2, 1]),
        "map_ivr.score_seed": torch.tensor(SCORE_SEED),
    }
    for i, k in enumerate((2, 1, 3)):
        raw[f"map_ivr.bag_{i}"] = torch.from_numpy(rng.normal(size=(k, 8)))
        raw[f"map_ivr.scores_{i}"] = torch.from_numpy(rng.random(size=(k, 3)))
    return raw


def parent_outputs(saved: dict, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same pipelines with xmodal's own classes, on the in-memory models (before saving)."""
    processor, pretraining, retrieval = saved["processor"], saved["pretraining"], saved["retrieval"]
    images = [raw[f"fashion.image_{i}"].numpy() for i in range(len(TEXTS))]
    fashionbert = run_fashionbert(
        processor, processor.image_processor, pretraining, pretraining.bert, retrieval, retrieval.bert, images, TEXTS
    )
    map_ivr_raw = {k.removeprefix("map_ivr."): v for k, v in raw.items() if k.startswith("map_ivr.")}
    map_ivr = run_map_ivr(saved["extractor"], saved["map_ivr"], map_ivr_raw)
    return {
        **{f"fashionbert.{k}": v for k, v in fashionbert.items()},
        **{f"map_ivr.{k}": v for k, v in map_ivr.items()},
    }


@pytest.fixture
def one_thread():
    # Both processes use one thread, so their float32 sums run in the same order and can be compared to the bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_retrieval_folder_maps_config_and_encoder_and_carries_the_code(saved):
    folder = saved["root"] / "fashionbert_retrieval"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["FashionBertForImageTextRetrieval"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_fashionbert.FashionBertConfig",
        "AutoModel": "modeling_fashionbert.FashionBertModel",
    }
    assert {"modeling_fashionbert.py", "configuration_fashionbert.py", "processing_fashionbert.py"} <= {
        p.name for p in folder.iterdir()
    }
    pretraining_config = json.loads((saved["root"] / "fashionbert" / "config.json").read_text())
    assert pretraining_config["auto_map"] == AUTO_MAPS["fashionbert"]
    # With xmodal installed: the concrete class loads all its weights, AutoModel gives the encoder.
    loaded, info = FashionBertForImageTextRetrieval.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    for name, tensor in saved["retrieval"].state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert type(AutoModel.from_pretrained(folder)) is FashionBertModel


@pytest.mark.parametrize("source", ["folder", "hub_repo_id"])
def test_saved_folders_load_and_run_with_remote_code_only(saved, isolated_site, tmp_path, one_thread, source, request):
    raw = raw_inputs()
    save_file(raw, tmp_path / "inputs.safetensors", metadata={"texts": json.dumps(TEXTS)})
    with safe_open(tmp_path / "inputs.safetensors", "pt") as f:
        assert json.loads(f.metadata()["texts"]) == TEXTS
    child = tmp_path / "child"
    child.mkdir()
    functions = "\n\n".join(inspect.getsource(f) for f in (run_fashionbert, run_map_ivr))
    script = CHILD_LOAD.replace("# PIPELINE FUNCTIONS", functions, 1)
    root = saved["root"]
    names = ("fashionbert", "fashionbert_retrieval", "map_ivr")
    hub = None
    if source == "folder":
        sources = [str(root / name) for name in names]
    else:  # the same folders pushed to the local Hub-compatible endpoint, loaded by repo id
        hub = request.getfixturevalue("local_hub")
        sources = [f"xmodal-tester/isolated-{name.replace('_', '-')}" for name in names]
        for name, repo_id in zip(names, sources):
            push_folder_to_hub(root / name, repo_id, token=hub.token)
    report = run_child(script, isolated_site, "load", child, *sources, str(tmp_path / "inputs.safetensors"), hub=hub)
    if hub is not None:
        for repo_id in sources:  # the code came from the repository, not from a local folder
            assert any(path.startswith(f"/{repo_id}/resolve/") and path.endswith(".py") for _, path, _ in hub.requests)

    assert_isolated(report, isolated_site)
    assert report["xmodal_modules"] == []
    assert not [f for f in report["loaded_files"] if Path(f).is_relative_to(REPO / "xmodal")]
    expected_classes = {
        "config": "FashionBertConfig", "processor": "FashionBertProcessor",
        "processor.image_processor": "FashionBertImageProcessor", "image_processor": "FashionBertImageProcessor",
        "pretraining": "FashionBertForPreTraining", "encoder": "FashionBertModel",
        "retrieval": "FashionBertForImageTextRetrieval", "retrieval_encoder": "FashionBertModel",
        "map_ivr_config": "MapIvrConfig", "extractor": "MapIvrFeatureExtractor", "map_ivr": "MapIvrModel",
    }  # fmt: skip
    modules_cache = Path(report["hf_modules_cache"]).resolve()
    assert modules_cache.is_relative_to(child.resolve())
    for key, name in expected_classes.items():
        loaded = report["classes"][key]
        # transformers' dynamic module, copied from the saved folder into the child's own modules cache
        assert loaded["name"] == name and loaded["module"].startswith("transformers_modules."), (key, loaded)
        assert Path(loaded["file"]).resolve().is_relative_to(modules_cache), (key, loaded)

    expected = parent_outputs(saved, raw)
    actual = load_file(child / "outputs.safetensors")
    assert actual.keys() == expected.keys()
    assert {"fashionbert.retrieval.logits", "fashionbert.input.input_ids", "map_ivr.score.s_all"} <= set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype and torch.equal(actual[name], tensor), name
    # The retrieval folder's AutoModel is the encoder of the same weights.
    pooled = actual["fashionbert.retrieval_encoder.pooler_output"]
    assert torch.equal(pooled, actual["fashionbert.encoder.pooler_output"])


# ----------------------------------------------------------------------------- transformers' pipeline, without xmodal

CHILD_PIPELINE = CHILD_PRELUDE + r"""
environment = isolated_environment()
import PIL.Image
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import pipeline
from transformers.utils.hub import HF_MODULES_CACHE

torch.set_num_threads(1)
inputs_path, sources = sys.argv[4], sys.argv[5:]
raw = load_file(inputs_path)
with safe_open(inputs_path, "pt") as f:
    texts = json.loads(f.metadata()["texts"])
images = [PIL.Image.fromarray(raw[f"image_{i}"].numpy()) for i in range(sum(k.startswith("image_") for k in raw))]

def describe(obj):
    module = type(obj).__module__
    return {"name": type(obj).__name__, "module": module, "file": sys.modules[module].__file__}

results = {}
for source in sources:
    search = pipeline("fashion-retrieval", model=source, trust_remote_code=True, device="cpu")
    # float32: compared with the float32 scores the test computes (bf16 has its own test in test_fashion_pipeline.py)
    text_to_image = [search(text, candidate_images=images, precision="float32") for text in texts]
    image_to_text = [search(image, candidate_texts=texts, top_k=2, precision="float32") for image in images]
    results[source] = {
        "pipeline": describe(search),
        "model": describe(search.model),
        "processor": describe(search.processor),
        "images_returned": all(r["image"] is images[r["index"]] for ranking in text_to_image for r in ranking),
        "text_to_image": [[{"index": r["index"], "score": r["score"]} for r in ranking] for ranking in text_to_image],
        "image_to_text": [[{"index": r["index"], "score": r["score"], "text": r["text"]} for r in ranking]
                          for ranking in image_to_text],
    }
write_report({
    **report_environment(),
    "results": results,
    "xmodal_modules": [m for m in sys.modules if m == "xmodal" or m.startswith("xmodal.")],
    "hf_modules_cache": HF_MODULES_CACHE,
})
"""

PIPELINE_TEXTS = ["red silk sleeveless dress", "black wool coat, zebra", "wool sleeve"]


def _pipeline_images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=(12 + 4 * i, 16, 3), dtype=np.uint8) for i in range(4)]


def _expected_scores(saved: dict, images: list[np.ndarray], model_key: str) -> torch.Tensor:
    """`(num_texts, num_images)` scores from xmodal's own scoring of the in-memory retrieval model (fused when its
    config has a fusion weight)."""
    pil_images = [PIL.Image.fromarray(image) for image in images]
    return score_matrix(saved[model_key], saved["processor"], PIPELINE_TEXTS, pil_images)


def test_saved_folders_carry_the_fashion_retrieval_pipeline(saved):
    for name, auto_class in (("fashionbert", "AutoModelForPreTraining"), ("fashionbert_retrieval", "AutoModel")):
        folder = saved["root"] / name
        assert (folder / "pipeline_fashionbert.py").is_file()
        config = json.loads((folder / "config.json").read_text())
        assert config["custom_pipelines"] == {
            "fashion-retrieval": {
                "impl": "pipeline_fashionbert.FashionRetrievalPipeline", "pt": [auto_class], "type": "multimodal",
            }
        }  # fmt: skip
    assert "custom_pipelines" not in json.loads((saved["root"] / "map_ivr" / "config.json").read_text())
    assert not (saved["root"] / "map_ivr" / "pipeline_fashionbert.py").exists()


@pytest.mark.parametrize("source", ["folder", "hub_repo_id"])
def test_fashion_retrieval_pipeline_runs_with_remote_code_only(
    saved, isolated_site, tmp_path, one_thread, source, request
):
    images = _pipeline_images()
    inputs_path = tmp_path / "pipeline_inputs.safetensors"
    save_file(
        {f"image_{i}": torch.from_numpy(image) for i, image in enumerate(images)}, inputs_path,
        metadata={"texts": json.dumps(PIPELINE_TEXTS)},
    )  # fmt: skip
    child = tmp_path / "child"
    child.mkdir()
    names = ("fashionbert", "fashionbert_retrieval", "fashionbert_fused")
    hub = None
    if source == "folder":
        sources = [str(saved["root"] / name) for name in names]
    else:  # pushed to the local Hub-compatible endpoint, the pipeline built from the repo id
        hub = request.getfixturevalue("local_hub")
        sources = [f"xmodal-tester/pipeline-{name.replace('_', '-')}" for name in names]
        for name, repo_id in zip(names, sources):
            push_folder_to_hub(saved["root"] / name, repo_id, token=hub.token)
    report = run_child(CHILD_PIPELINE, isolated_site, "pipeline", child, str(inputs_path), *sources, hub=hub)
    if hub is not None:
        for repo_id in sources:  # the pipeline's code came from the repository
            assert any(
                path.startswith(f"/{repo_id}/resolve/") and path.endswith("/pipeline_fashionbert.py")
                for _, path, _ in hub.requests
            ), repo_id

    assert_isolated(report, isolated_site)
    assert report["xmodal_modules"] == []
    modules_cache = Path(report["hf_modules_cache"]).resolve()
    # The fused folder's pipeline ranks by the fusion weight its config.json carries, as xmodal's model does.
    assert json.loads((saved["root"] / "fashionbert_fused" / "config.json").read_text())["fusion_weight"] == FUSED["fusion_weight"]
    for source_name, name in zip(sources, names):
        expected = _expected_scores(saved, images, "fused" if name == "fashionbert_fused" else "retrieval")
        result = report["results"][source_name]
        for key, class_name in (
            ("pipeline", "FashionRetrievalPipeline"), ("processor", "FashionBertProcessor"),
            ("model", "FashionBertForImageTextRetrieval" if name == "fashionbert_retrieval" else "FashionBertForPreTraining"),
        ):  # fmt: skip
            loaded = result[key]
            assert loaded["name"] == class_name and loaded["module"].startswith("transformers_modules."), loaded
            assert Path(loaded["file"]).resolve().is_relative_to(modules_cache), loaded
        assert result["images_returned"] is True
        # text -> images: every image, best first, the model's own scores
        for t, ranking in enumerate(result["text_to_image"]):
            order = torch.sort(expected[t], descending=True, stable=True).indices.tolist()
            assert [r["index"] for r in ranking] == order, (name, t)
            assert [r["score"] for r in ranking] == pytest.approx(expected[t, order].tolist(), abs=1e-5)
        # image -> texts: the best two texts
        for i, ranking in enumerate(result["image_to_text"]):
            order = torch.sort(expected[:, i], descending=True, stable=True).indices.tolist()[:2]
            assert [r["index"] for r in ranking] == order, (name, i)
            assert [r["text"] for r in ranking] == [PIPELINE_TEXTS[k] for k in order]
            assert [r["score"] for r in ranking] == pytest.approx(expected[order, i].tolist(), abs=1e-5)


# ----------------------------------------------------------------------------- CNN patch encoders, without xmodal

CHILD_CNN = CHILD_PRELUDE + r"""
environment = isolated_environment()
import PIL.Image
import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModel

torch.set_num_threads(1)
photo, folders = sys.argv[4], sys.argv[5:]
tensors, classes = {}, {}
for folder in folders:
    name = os.path.basename(folder)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    pixels = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)(PIL.Image.open(photo), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tensors[f"{name}.patch_features"] = model.get_patch_features(pixels).contiguous()
        tensors[f"{name}.image_embeddings"] = model.get_image_embeddings(pixel_values=pixels).contiguous()
    classes[name] = [type(model).__module__, type(model.patch_encoder).__module__ + "." + type(model.patch_encoder).__name__]
save_file(tensors, os.path.join(out_dir, "outputs.safetensors"))
write_report({**report_environment(), "classes": classes, "xmodal_modules": [m for m in sys.modules if m.startswith("xmodal")]})
"""


def test_cnn_patch_encoder_folders_embed_a_photo_alike_without_xmodal(isolated_site, tmp_path, one_thread):
    """A FashionBERT around each CNN family (the packaged ImageNet MobileNetV2; tiny random ones for the others),
    saved as train.py saves it, loads with remote code alone and embeds a real photo with the same numbers."""
    from transformers import AutoConfig, BertTokenizer

    from test_patch_encoders import TINY_CNNS
    from xmodal import FashionBertConfig, FashionBertImageProcessor, FashionBertProcessor
    from xmodal.pretrained import packaged_patch_encoder

    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the real photographs")
    photo = Path(skimage_data.data_dir) / "chelsea.png"
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat"]) + "\n")
    tokenizer = BertTokenizer.from_pretrained(tmp_path / "vocab")
    folders, expected = [], {}
    for family, cnn in TINY_CNNS.items():
        weights = packaged_patch_encoder(family)
        image_size = 256 if weights else 64
        config = FashionBertConfig(
            vocab_size=6, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=16, image_size=image_size, patch_grid=4 if image_size == 64 else 8,
            patch_encoder_type=family, patch_encoder_config=AutoConfig.from_pretrained(weights) if weights else cnn,
            patch_feature_mode="grid", contrastive_projection_dim=8,
        )  # fmt: skip
        torch.manual_seed(0)
        model = FashionBertModel(config).eval()
        if weights:
            model.load_patch_encoder_weights(weights)
        processor = FashionBertProcessor(FashionBertImageProcessor(image_size=image_size, patch_grid=config.patch_grid), tokenizer)
        save_model_folder(tmp_path / family, model, processor)
        folders.append(str(tmp_path / family))
        pixels = processor.image_processor(PIL.Image.open(photo), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected[f"{family}.patch_features"] = model.get_patch_features(pixels)
            expected[f"{family}.image_embeddings"] = model.get_image_embeddings(pixel_values=pixels)
    child = tmp_path / "child"
    child.mkdir()
    report = run_child(CHILD_CNN, isolated_site, "cnn", child, str(photo), *folders)
    assert_isolated(report, isolated_site)
    assert report["xmodal_modules"] == []
    actual = load_file(child / "outputs.safetensors")
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    for family, (module, patch_encoder) in report["classes"].items():
        assert module.startswith("transformers_modules.")
        assert patch_encoder.startswith(f"transformers.models.{family}.modeling_{family}."), patch_encoder
