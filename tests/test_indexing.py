"""xmodal.indexing.EmbeddingIndex: exact search = brute force, approximate recall, save/load without pickle, errors.

The torch backend runs everywhere; the faiss cases skip only when faiss is not installed (the `test` extra has it).
"""

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from xmodal import indexing
from xmodal.indexing import EmbeddingIndex, faiss_available


FAISS_MISSING = "faiss is not installed (`pip install faiss-cpu`, part of the `test` extra): faiss backend not tested"
needs_faiss = pytest.mark.skipif(not faiss_available(), reason=FAISS_MISSING)
BACKENDS = ["torch", pytest.param("faiss", marks=needs_faiss)]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def random_unit(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(count, dim)))


def clustered_unit(count: int, dim: int = 32, clusters: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` vectors and 50 queries around the same random centres (embedding-like data), unit length."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, count)] + 0.5 * rng.normal(size=(count, dim))
    queries = centres[rng.integers(0, clusters, 50)] + 0.5 * rng.normal(size=(50, dim))
    return unit(vectors), unit(queries)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_search_is_brute_force(backend, dtype):
    vectors, queries = random_unit(300), random_unit(9, seed=1)
    ids = np.arange(300) * 3 + 1000
    index = EmbeddingIndex.build(vectors, ids=ids, backend=backend, kind="exact", dtype=dtype)
    assert (len(index), index.dim, index.backend, index.kind, index.dtype) == (300, 16, backend, "exact", dtype)
    stored = vectors.astype(np.float16).astype(np.float32) if dtype == "float16" else vectors  # search upcasts
    expected_scores, expected_positions = brute_force(stored, queries, 10)
    scores, found = index.search(queries, top_k=10)
    assert isinstance(scores, np.ndarray) and isinstance(found, np.ndarray)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (9, 10)
    np.testing.assert_array_equal(found, ids[expected_positions])
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    # One query as a vector (or a tensor), and k capped at the index size.
    one_scores, one = index.search(torch.from_numpy(queries[0]), top_k=1000)
    assert one.shape == (1, 300)
    np.testing.assert_array_equal(one[0, :10], found[0])
    torch.testing.assert_close(index.get_vectors([4, 2]), torch.from_numpy(stored[[4, 2]]))


def test_torch_backend_chunks_gallery_and_queries(monkeypatch):
    monkeypatch.setattr(indexing, "TORCH_BLOCK_ELEMENTS", 21)  # 3 queries per block with chunks of 7 rows
    vectors, queries = random_unit(50), random_unit(8, seed=2)
    index = EmbeddingIndex.build(vectors, backend="torch", chunk_size=7)
    scores, found = index.search(queries, top_k=9)
    expected_scores, expected = brute_force(vectors, queries, 9)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)


@needs_faiss
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_approximate_kinds_reach_high_recall(kind, dtype):
    # 3000 clustered random 32-d vectors, 50 queries, default parameters (HNSW M=32, ef_search=128; IVF nlist=219,
    # nprobe=27): recall@10 against the exact top 10 must be >= 0.95 (measured 1.0 in float32, 0.996 in float16).
    vectors, queries = clustered_unit(3000)
    index = EmbeddingIndex.build(vectors, kind=kind, dtype=dtype)
    assert index.backend == "faiss" and index.kind == kind
    _, found = index.search(queries, top_k=10)
    _, expected = brute_force(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected)])
    assert recall >= 0.95, recall


def test_auto_kind_is_exact_below_the_threshold(monkeypatch):
    vectors = random_unit(40)
    assert EmbeddingIndex.build(vectors).kind == "exact"
    assert EmbeddingIndex.build(vectors).backend == ("faiss" if faiss_available() else "torch")
    monkeypatch.setattr(indexing, "EXACT_THRESHOLD", 30)
    assert EmbeddingIndex.build(vectors, backend="torch").kind == "exact"  # torch is exact only
    if faiss_available():
        index = EmbeddingIndex.build(vectors)
        assert (index.kind, index.params["hnsw_m"], index.params["ef_search"]) == ("hnsw", 32, 128)


def saved_files(folder) -> set[str]:
    names = {path.name for path in folder.iterdir()}
    assert not any(name.endswith((".pkl", ".pickle", ".bin", ".pt", ".pth", ".npy", ".npz")) for name in names)
    return names


@pytest.mark.parametrize(
    "backend, kind",
    [("torch", "exact")] + [pytest.param("faiss", kind, marks=needs_faiss) for kind in ("exact", "hnsw", "ivf")],
)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_round_trip_without_pickle(tmp_path, backend, kind, dtype):
    vectors, queries = clustered_unit(400, dim=8)
    params = {"nlist": 10, "nprobe": 3} if kind == "ivf" else {}
    ids = np.arange(400)[::-1].copy()
    index = EmbeddingIndex.build(vectors, ids=ids, backend=backend, kind=kind, dtype=dtype, **params)
    before = index.search(queries, top_k=5)
    index.save(tmp_path / "index")
    names = saved_files(tmp_path / "index")
    assert names == ({"index.json", "vectors.safetensors"} | ({"index.faiss"} if kind != "exact" else set()))
    metadata = json.loads((tmp_path / "index" / "index.json").read_text())
    assert (metadata["size"], metadata["dim"], metadata["kind"], metadata["dtype"]) == (400, 8, kind, dtype)
    with safe_open(str(tmp_path / "index" / "vectors.safetensors"), framework="pt") as file:
        assert file.get_tensor("vectors").dtype == getattr(torch, dtype)
        assert file.get_tensor("ids").tolist() == list(range(399, -1, -1))
    if kind != "exact":
        import faiss

        assert faiss.read_index(str(tmp_path / "index" / "index.faiss")).ntotal == 400

    loaded = EmbeddingIndex.load(tmp_path / "index")
    assert (len(loaded), loaded.dim, loaded.backend, loaded.kind, loaded.dtype) == (400, 8, backend, kind, dtype)
    assert loaded.params == index.params
    after = loaded.search(queries, top_k=5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6, atol=1e-6)


def test_float16_halves_the_stored_vectors(tmp_path):
    vectors = random_unit(256, dim=64)
    for dtype in ("float32", "float16"):
        EmbeddingIndex.build(vectors, backend="torch", dtype=dtype).save(tmp_path / dtype)
    size32 = (tmp_path / "float32" / "vectors.safetensors").stat().st_size
    size16 = (tmp_path / "float16" / "vectors.safetensors").stat().st_size
    assert size16 < 0.6 * size32


@needs_faiss
def test_approximate_index_loads_as_exact_torch_without_faiss(tmp_path):
    vectors, queries = clustered_unit(300, dim=8)
    EmbeddingIndex.build(vectors, kind="hnsw").save(tmp_path / "hnsw")
    with pytest.warns(UserWarning, match="exactly with torch"):
        loaded = EmbeddingIndex.load(tmp_path / "hnsw", backend="torch")
    assert (loaded.backend, loaded.kind) == ("torch", "exact")
    np.testing.assert_array_equal(loaded.search(queries, 4)[1], brute_force(vectors, queries, 4)[1])


@needs_faiss
def test_search_params_can_change_and_are_saved(tmp_path):
    index = EmbeddingIndex.build(random_unit(200), kind="ivf", nlist=8, nprobe=1)
    index.set_search_params(nprobe=8)  # every cell: exact
    vectors = index.get_vectors().numpy()
    np.testing.assert_array_equal(index.search(vectors[:5], 3)[1][:, 0], np.arange(5))
    index.save(tmp_path / "ivf")
    assert EmbeddingIndex.load(tmp_path / "ivf").params["nprobe"] == 8
    with pytest.raises(TypeError, match="ef_search"):
        index.set_search_params(ef_search=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_build_and_search_errors(backend):
    vectors = random_unit(20)
    with pytest.raises(ValueError, match="shape \\(n, dim\\)"):
        EmbeddingIndex.build(vectors[0], backend=backend)
    with pytest.raises(ValueError, match="empty"):
        EmbeddingIndex.build(np.zeros((0, 16), np.float32), backend=backend)
    bad = vectors.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite.*row 3"):
        EmbeddingIndex.build(bad, backend=backend)
    with pytest.raises(ValueError, match="unit-length \\(row 0"):
        EmbeddingIndex.build(vectors * 2, backend=backend)
    assert len(EmbeddingIndex.build(vectors * 2, backend=backend, normalize=True)) == 20
    with pytest.raises(ValueError, match="distinct"):
        EmbeddingIndex.build(vectors, ids=[1] * 20, backend=backend)
    with pytest.raises(ValueError, match="one per vector"):
        EmbeddingIndex.build(vectors, ids=range(19), backend=backend)
    with pytest.raises(ValueError, match="`kind`"):
        EmbeddingIndex.build(vectors, backend=backend, kind="lsh")
    with pytest.raises(ValueError, match="`dtype`"):
        EmbeddingIndex.build(vectors, backend=backend, dtype="int8")
    with pytest.raises(TypeError, match="unknown parameter"):
        EmbeddingIndex.build(vectors, backend=backend, kind="exact", nprobe=3)
    index = EmbeddingIndex.build(vectors, backend=backend)
    with pytest.raises(ValueError, match="dimension 16"):
        index.search(random_unit(2, dim=8), top_k=3)
    with pytest.raises(ValueError, match="non-finite"):
        index.search(np.full((1, 16), np.inf, np.float32), top_k=3)
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            index.search(vectors[:1], top_k=top_k)


def test_torch_backend_refuses_approximate_kinds():
    with pytest.raises(ValueError, match="needs the faiss backend"):
        EmbeddingIndex.build(random_unit(10), backend="torch", kind="hnsw")


def test_without_faiss_auto_is_torch_and_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    assert not faiss_available()
    assert EmbeddingIndex.build(random_unit(10)).backend == "torch"
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        EmbeddingIndex.build(random_unit(10), backend="faiss")


def test_load_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        EmbeddingIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not an EmbeddingIndex folder: it has no index.json"):
        EmbeddingIndex.load(tmp_path / "empty")
    folder = tmp_path / "index"
    EmbeddingIndex.build(random_unit(10), backend="torch").save(folder)
    metadata = (folder / "index.json").read_text()
    (folder / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json.*not valid JSON"):
        EmbeddingIndex.load(folder)
    (folder / "index.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="does not describe an EmbeddingIndex"):
        EmbeddingIndex.load(folder)
    (folder / "index.json").write_text(metadata.replace('"size": 10', '"size": 11'))
    with pytest.raises(ValueError, match="vectors.safetensors.*says 11 x 16"):
        EmbeddingIndex.load(folder)
    (folder / "index.json").write_text(metadata)
    (folder / "vectors.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="vectors.safetensors.*not a readable safetensors"):
        EmbeddingIndex.load(folder)
    (folder / "vectors.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no vectors.safetensors"):
        EmbeddingIndex.load(folder)


@needs_faiss
def test_load_errors_name_a_broken_faiss_file(tmp_path):
    folder = tmp_path / "hnsw"
    EmbeddingIndex.build(random_unit(30), kind="hnsw").save(folder)
    (folder / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(ValueError, match="index.faiss.*is not a faiss index"):
        EmbeddingIndex.load(folder)
    (folder / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="has no index.faiss"):
        EmbeddingIndex.load(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(EmbeddingIndex.load(folder, backend="torch")) == 30  # the vectors alone still load


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_is_saved_and_checked_on_load(tmp_path, backend):
    vectors = random_unit(20)
    index = EmbeddingIndex.build(vectors, backend=backend, source="sha256:abc")
    assert index.source == "sha256:abc"
    index.save(tmp_path / "index")
    assert EmbeddingIndex.load(tmp_path / "index").source == "sha256:abc"
    EmbeddingIndex.build(vectors, backend=backend).save(tmp_path / "plain")
    assert EmbeddingIndex.load(tmp_path / "plain").source is None
    metadata = json.loads((tmp_path / "index" / "index.json").read_text())
    (tmp_path / "index" / "index.json").write_text(json.dumps({**metadata, "source": 3}))
    with pytest.raises(ValueError, match="`source` that is not a string"):
        EmbeddingIndex.load(tmp_path / "index")
