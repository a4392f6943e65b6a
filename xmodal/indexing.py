"""
A nearest-neighbour index over unit-length embeddings (inner product = cosine), for the first stage of a retrieval.

```python
from xmodal.indexing import EmbeddingIndex

index = EmbeddingIndex.build(image_embeddings, ids=product_ids)   # (N, D) unit-length float vectors
scores, ids = index.search(text_embeddings, top_k=100)            # numpy: (Q, k) float32 and int64, best first
index.save("outputs/catalogue_index")                             # safetensors + JSON (+ faiss's own format)
index = EmbeddingIndex.load("outputs/catalogue_index")
```

Backends and kinds:

* `"faiss"` (when `faiss` imports; `pip install faiss-cpu` or `xmodal[faiss]`) and `"torch"` (always available:
  exact, a chunked matrix product and `topk`; at most 2**24 float32 scores, 64 MiB, exist at once).
* `kind="exact"`: every vector is compared (faiss `IndexFlatIP`, or `IndexScalarQuantizer` with `QT_fp16` for
  `dtype="float16"`, exact over the stored half-precision vectors).
* `kind="hnsw"`: faiss `IndexHNSWFlat` / `IndexHNSWSQ` with `METRIC_INNER_PRODUCT` (a graph; recall tuned by
  `ef_search`).
* `kind="ivf"`: faiss `IndexIVFFlat` / `IndexIVFScalarQuantizer` (k-means cells, `nlist` ~ 4 * sqrt(N) by default,
  `nprobe` cells visited per query).
* `kind="auto"` (default): exact below `EXACT_THRESHOLD` (50_000) vectors, HNSW above it with faiss; the torch
  backend is always exact. HNSW is the approximate default because it needs no training step (IVF's k-means must see
  a representative sample and is worth redoing when the catalogue changes a lot), reaches high recall (> 0.95 at the
  default `ef_search=128` on typical embedding data) with sub-millisecond queries, and its build is a single pass.
  IVF is the memory-lean choice for many millions of vectors (no graph links: see the per-vector memory below).
  Below 50_000 vectors an exact scan costs a few milliseconds per query, so approximation buys nothing there.

Memory per vector of dimension D (bytes; `ids` add 8 everywhere):

* exact: 4 * D (float32) or 2 * D (float16).
* hnsw: 4 * D or 2 * D, plus the graph: about 8 * M on level 0 and a little more on the upper levels
  (~ 4 * 2 * M * (1 + 1 / M)), i.e. ~ 264 bytes at the default M = 32.
* ivf: 4 * D or 2 * D, plus 8 (the id in its inverted list) and 8 (the direct map that lets vectors be read back).

Saved folders never contain a pickle: `index.json` (metadata), `vectors.safetensors` (the vectors, in the storage
dtype, and the int64 ids) and, for approximate kinds, `index.faiss` (`faiss.write_index`, faiss's own binary
format). Exact indexes are rebuilt from the vectors on load; an approximate one loads without faiss too (as an exact
torch index over the saved vectors, with a warning).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


__all__ = ["EXACT_THRESHOLD", "EmbeddingIndex", "faiss_available"]

EXACT_THRESHOLD = 50_000
"""`kind="auto"` builds an exact index below this many vectors, an approximate (HNSW) one from it on."""

FORMAT = "xmodal.embedding_index"
FORMAT_VERSION = 1
METADATA_FILE = "index.json"
VECTORS_FILE = "vectors.safetensors"
FAISS_FILE = "index.faiss"

BACKENDS = ("auto", "faiss", "torch")
KINDS = ("auto", "exact", "hnsw", "ivf")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
# Build / search parameters of each kind, with their defaults (None: derived from the data at build time).
PARAMS: dict[str, dict[str, Any]] = {
    "exact": {},
    "hnsw": {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": None},
}
TORCH_PARAMS = {"chunk_size": 16_384}
TORCH_BLOCK_ELEMENTS = 2**24  # queries per block: at most this many (query, vector) scores (64 MiB) at once
UNIT_TOLERANCE = 1e-3


def faiss_available() -> bool:
    """Whether `faiss` imports (the `"faiss"` backend, and what `backend="auto"` picks)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "the 'faiss' backend needs faiss: `pip install faiss-cpu` (or `pip install xmodal[faiss]`), or use "
            "backend='torch' (exact search)."
        ) from error
    return faiss


def _as_matrix(values: Any, name: str, dim: int | None = None, allow_vector: bool = False) -> np.ndarray:
    """`values` as a C-contiguous float32 `(n, dim)` array, checked: 2-D (or 1-D when `allow_vector`), finite."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float32).numpy()
    try:
        array = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a float array or tensor: {error}") from error
    if allow_vector and array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, dim), got {tuple(array.shape)}.")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"`{name}` must have dimension {dim} (the index's), got {array.shape[1]}.")
    if array.shape[1] < 1:
        raise ValueError(f"`{name}` must have a dimension of at least 1, got shape {tuple(array.shape)}.")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise ValueError(f"`{name}` has non-finite values (NaN or inf) in row {int(np.flatnonzero(~finite)[0])}.")
    return array


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")


class EmbeddingIndex:
    """
    Inner-product nearest neighbours over unit-length float vectors (see the module docstring for backends, kinds
    and memory). Build with `EmbeddingIndex.build`, reopen with `EmbeddingIndex.load`.

    Attributes:
        dim (`int`): vector dimension.
        backend (`str`): `"faiss"` or `"torch"`.
        kind (`str`): `"exact"`, `"hnsw"` or `"ivf"`.
        dtype (`str`): storage dtype, `"float32"` or `"float16"` (search always computes in float32).
        params (`dict`): the kind's parameters (`hnsw_m`, `ef_construction`, `ef_search`; `nlist`, `nprobe`;
            `chunk_size` for the torch backend).
        ids (`np.ndarray` of int64, shape `(len(index),)`): the id of each vector, in build order.
        source (`str` or `None`): what produced the vectors (the retrievers store their model's fingerprint here, so
            an index is never searched with embeddings of another model); saved with the index.
    """

    def __init__(
        self,
        *,
        dim: int,
        ids: np.ndarray,
        backend: str,
        kind: str,
        dtype: str,
        params: dict[str, Any],
        vectors: torch.Tensor | None = None,
        faiss_index: Any = None,
        source: str | None = None,
    ):
        # Private: use `build` or `load`. The torch backend holds `vectors`; the faiss one only its own index.
        self.dim = dim
        self.ids = ids
        self.backend = backend
        self.kind = kind
        self.dtype = dtype
        self.params = params
        self._vectors = vectors
        self._faiss_index = faiss_index
        self.source = source

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(size={len(self)}, dim={self.dim}, backend={self.backend!r}, kind={self.kind!r}, "
            f"dtype={self.dtype!r})"
        )

    # ---- building ----

    @classmethod
    def build(
        cls,
        vectors: Any,
        ids: Any = None,
        backend: str = "auto",
        kind: str = "auto",
        dtype: str = "float32",
        normalize: bool = False,
        source: str | None = None,
        **params: Any,
    ) -> EmbeddingIndex:
        """
        Index `vectors`.

        Args:
            vectors: `(N, D)` unit-length float vectors (numpy array or tensor, any device), N >= 1.
            ids: `(N,)` distinct integer ids returned by `search` (default: `0..N-1`, the row numbers).
            backend: `"faiss"`, `"torch"` or `"auto"` (faiss when it imports).
            kind: `"exact"`, `"hnsw"`, `"ivf"` (both faiss only) or `"auto"` (exact below `EXACT_THRESHOLD` vectors
                or with the torch backend, else HNSW).
            dtype: storage dtype, `"float32"` or `"float16"` (half the memory; scores then come from the rounded
                vectors).
            normalize: L2-normalise the rows instead of requiring unit length.
            source: what produced the vectors (kept as `index.source` and saved), e.g. a model fingerprint.
            **params: HNSW: `hnsw_m` (32), `ef_construction` (200), `ef_search` (128). IVF: `nlist`
                (default round(4 * sqrt(N)), at most N), `nprobe` (default max(1, nlist // 8)). Torch: `chunk_size`
                (16_384 gallery rows per matrix product; at most 2**24 scores, 64 MiB, at once).

        Raises:
            ValueError: bad shapes, non-finite or non-unit vectors, bad ids, an unknown backend / kind / dtype, or an
                approximate kind with the torch backend.
            TypeError: a parameter the chosen kind does not take.
            ImportError: `backend="faiss"` without faiss.
        """
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
        if kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
        if dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {tuple(DTYPES)}, got {dtype!r}.")
        array = _as_matrix(vectors, "vectors")
        if array.shape[0] < 1:
            raise ValueError("`vectors` is empty: an index needs at least one vector.")
        norms = np.linalg.norm(array, axis=1)
        if normalize:
            if (norms == 0).any():
                row = int(np.flatnonzero(norms == 0)[0])
                raise ValueError(f"`vectors` row {row} is zero: it cannot be normalised.")
            array = np.ascontiguousarray(array / norms[:, None])
        elif (np.abs(norms - 1.0) > UNIT_TOLERANCE).any():
            row = int(np.flatnonzero(np.abs(norms - 1.0) > UNIT_TOLERANCE)[0])
            raise ValueError(
                f"`vectors` must be unit-length (row {row} has norm {norms[row]:.6g}); pass normalize=True to "
                "normalise them."
            )
        ids = cls._check_ids(ids, array.shape[0])
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if kind == "auto":
            kind = "exact" if backend == "torch" or array.shape[0] < EXACT_THRESHOLD else "hnsw"
        if backend == "torch" and kind != "exact":
            raise ValueError(f"kind={kind!r} needs the faiss backend; the torch backend is exact only.")
        params = cls._resolve_params(backend, kind, params, array.shape[0])
        if backend == "torch":
            vectors_t = torch.from_numpy(array).to(DTYPES[dtype])
            return cls(dim=array.shape[1], ids=ids, backend="torch", kind="exact", dtype=dtype, params=params,
                       vectors=vectors_t, source=source)  # fmt: skip
        faiss_index = cls._faiss_build(array, kind, dtype, params)
        return cls(dim=array.shape[1], ids=ids, backend="faiss", kind=kind, dtype=dtype, params=params,
                   faiss_index=faiss_index, source=source)  # fmt: skip

    @staticmethod
    def _check_ids(ids: Any, count: int) -> np.ndarray:
        if ids is None:
            return np.arange(count, dtype=np.int64)
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        array = np.asarray(ids)
        if array.ndim != 1 or array.shape[0] != count:
            raise ValueError(f"`ids` must have shape ({count},) (one per vector), got {tuple(array.shape)}.")
        if array.dtype.kind not in "iu":
            raise ValueError(f"`ids` must be integers, got dtype {array.dtype}.")
        array = array.astype(np.int64)
        if np.unique(array).shape[0] != count:
            raise ValueError("`ids` must be distinct.")
        return array

    @staticmethod
    def _resolve_params(backend: str, kind: str, params: dict[str, Any], count: int) -> dict[str, Any]:
        allowed = dict(TORCH_PARAMS) if backend == "torch" else dict(PARAMS[kind])
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TypeError(
                f"unknown parameter(s) {unknown} for backend={backend!r}, kind={kind!r}; it takes {sorted(allowed)}."
            )
        resolved = {**allowed, **params}
        if kind == "ivf":
            if resolved["nlist"] is None:
                resolved["nlist"] = max(1, min(count, round(4 * math.sqrt(count))))
            if resolved["nprobe"] is None:
                resolved["nprobe"] = max(1, resolved["nlist"] // 8)
        for name, value in resolved.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
            resolved[name] = int(value)
        if kind == "ivf" and resolved["nlist"] > count:
            raise ValueError(f"`nlist` ({resolved['nlist']}) cannot exceed the number of vectors ({count}).")
        return resolved

    @staticmethod
    def _faiss_build(array: np.ndarray, kind: str, dtype: str, params: dict[str, Any]) -> Any:
        faiss = _faiss()
        dim, metric = array.shape[1], faiss.METRIC_INNER_PRODUCT
        fp16 = faiss.ScalarQuantizer.QT_fp16
        if kind == "exact":
            index = faiss.IndexFlatIP(dim) if dtype == "float32" else faiss.IndexScalarQuantizer(dim, fp16, metric)
        elif kind == "hnsw":
            m = params["hnsw_m"]
            if dtype == "float32":
                index = faiss.IndexHNSWFlat(dim, m, metric)
            else:
                index = faiss.IndexHNSWSQ(dim, fp16, m, metric)
            index.hnsw.efConstruction = params["ef_construction"]
        else:
            quantizer = faiss.IndexFlatIP(dim)
            if dtype == "float32":
                index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], metric)
            else:  # no residual encoding: the stored vectors are the fp16-rounded inputs, as for the other kinds
                index = faiss.IndexIVFScalarQuantizer(quantizer, dim, params["nlist"], fp16, metric, False)
        if not index.is_trained:
            index.train(array)
        index.add(array)
        if kind == "ivf":
            index.make_direct_map()  # so `get_vectors` (and `save`) can read vectors back
        EmbeddingIndex._apply_search_params(index, kind, params)
        return index

    @staticmethod
    def _apply_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
        if kind == "hnsw":
            index.hnsw.efSearch = params["ef_search"]
        elif kind == "ivf":
            index.nprobe = params["nprobe"]

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """
        Change the recall / speed trade-off of an approximate index: `ef_search` (HNSW) or `nprobe` (IVF). Saved with
        the index.
        """
        given = {name: value for name, value in {"ef_search": ef_search, "nprobe": nprobe}.items() if value is not None}
        for name, value in given.items():
            if name not in self.params:
                raise TypeError(f"`{name}` does not apply to a {self.backend} {self.kind!r} index.")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
            self.params[name] = int(value)
        if self._faiss_index is not None:
            self._apply_search_params(self._faiss_index, self.kind, self.params)

    # ---- searching ----

    def search(self, queries: Any, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """
        The `top_k` vectors with the largest inner product with each query.

        Args:
            queries: `(Q, D)` or `(D,)` float queries (array or tensor); usually unit-length, not required.
            top_k: how many per query (capped at `len(index)`).

        Returns:
            `(scores, ids)`, numpy arrays of shape `(Q, min(top_k, len(index)))`: float32 inner products, best first,
            and the int64 ids of the hits. An approximate index that finds fewer hits pads with id -1 and score -inf.
        """
        positions, scores = self.search_positions(queries, top_k)
        ids = np.where(positions >= 0, self.ids[np.clip(positions, 0, None)], -1)
        return scores, ids

    def search_positions(self, queries: Any, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(positions, scores)`: like `search`, with row numbers (build order) instead of ids."""
        _check_top_k(top_k)
        array = _as_matrix(queries, "queries", self.dim, allow_vector=True)
        k = min(int(top_k), len(self))
        if self._faiss_index is not None:
            scores, positions = self._faiss_index.search(array, k)
            scores = np.where(positions >= 0, scores, -np.inf).astype(np.float32)
            return positions.astype(np.int64), scores
        return self._torch_search(torch.from_numpy(array), k)

    def _torch_search(self, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """
        Exact top-k by chunks of `chunk_size` gallery rows, merged as they come, queries in blocks so that at most
        `TORCH_BLOCK_ELEMENTS` scores exist at once.
        """
        chunk = self.params.get("chunk_size", TORCH_PARAMS["chunk_size"])
        query_block = max(1, TORCH_BLOCK_ELEMENTS // chunk)
        all_scores, all_positions = [], []
        for q_start in range(0, queries.shape[0], query_block):
            block = queries[q_start : q_start + query_block]
            best_scores = torch.empty(block.shape[0], 0)
            best_positions = torch.empty(block.shape[0], 0, dtype=torch.long)
            for start in range(0, len(self), chunk):
                scores = block @ self._vectors[start : start + chunk].float().T
                top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                merged_scores = torch.cat([best_scores, top.values], dim=1)
                merged_positions = torch.cat([best_positions, top.indices + start], dim=1)
                order = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1).indices
                best_scores, best_positions = merged_scores.gather(1, order), merged_positions.gather(1, order)
            all_scores.append(best_scores)
            all_positions.append(best_positions)
        return torch.cat(all_positions).numpy(), torch.cat(all_scores).numpy()

    def get_vectors(self, positions: Any = None) -> torch.Tensor:
        """
        The stored vectors (as float32; float16 storage gives its rounded values) at `positions` (row numbers in
        build order, default all): `(len(positions), D)` CPU tensor.
        """
        if positions is None:
            positions = np.arange(len(self), dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions must be in [0, {len(self)}), got {positions.min()}..{positions.max()}.")
        if self._faiss_index is not None:
            if positions.size == 0:
                return torch.zeros(0, self.dim)
            return torch.from_numpy(self._faiss_index.reconstruct_batch(positions).astype(np.float32))
        return self._vectors[torch.from_numpy(positions)].float()

    # ---- saving ----

    def save(self, folder: str | os.PathLike) -> None:
        """
        Write the index to `folder` (created if needed): `index.json`, `vectors.safetensors` (vectors in the storage
        dtype, int64 ids) and, for approximate kinds, `index.faiss` (`faiss.write_index`). No pickle.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vectors = self.get_vectors().to(DTYPES[self.dtype]).contiguous()
        save_file({"vectors": vectors, "ids": torch.from_numpy(self.ids.copy())}, str(folder / VECTORS_FILE),
                  metadata={"format": FORMAT})  # fmt: skip
        files = {"vectors": VECTORS_FILE}
        if self.kind != "exact":
            _faiss().write_index(self._faiss_index, str(folder / FAISS_FILE))
            files["faiss"] = FAISS_FILE
        elif (folder / FAISS_FILE).exists():
            (folder / FAISS_FILE).unlink()  # a stale structure from an earlier save
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "size": len(self),
            "dim": self.dim,
            "backend": self.backend,
            "kind": self.kind,
            "dtype": self.dtype,
            "params": self.params,
            "files": files,
            "source": self.source,
        }
        (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike, backend: str = "auto") -> EmbeddingIndex:
        """
        Reopen a folder written by `save`.

        Args:
            folder: the folder.
            backend: `"auto"` (the saved backend when available), `"faiss"` or `"torch"`. An exact index is rebuilt
                from the vectors with this backend; an approximate one needs faiss, and loads as an exact torch index
                (with a warning) when faiss is missing or `backend="torch"`.

        Raises:
            FileNotFoundError: `folder` is not a folder, or lacks `index.json` / a file it lists.
            ValueError: a file that is not what `index.json` says (naming the file).
        """
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{str(folder)!r} is not a folder: pass a folder written by EmbeddingIndex.save.")
        metadata_path = folder / METADATA_FILE
        if not metadata_path.is_file():
            raise FileNotFoundError(f"{str(folder)!r} is not an EmbeddingIndex folder: it has no {METADATA_FILE}.")
        try:
            metadata = json.loads(metadata_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{str(metadata_path)!r} is not valid JSON: {error}") from error
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise ValueError(f"{str(metadata_path)!r} does not describe an EmbeddingIndex (no format {FORMAT!r}).")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{str(metadata_path)!r} has format_version {metadata.get('format_version')!r}; this "
                             f"xmodal reads version {FORMAT_VERSION}.")  # fmt: skip
        try:
            size, dim, kind, dtype = int(metadata["size"]), int(metadata["dim"]), metadata["kind"], metadata["dtype"]
            params = dict(metadata["params"])
            source = metadata.get("source")
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{str(metadata_path)!r} lacks a valid field: {error!r}") from error
        if kind not in KINDS[1:] or dtype not in DTYPES:
            raise ValueError(f"{str(metadata_path)!r} has an unknown kind {kind!r} or dtype {dtype!r}.")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"{str(metadata_path)!r} has a `source` that is not a string: {source!r}.")

        vectors_path = folder / VECTORS_FILE
        if not vectors_path.is_file():
            raise FileNotFoundError(f"EmbeddingIndex folder {str(folder)!r} has no {VECTORS_FILE}.")
        try:
            with safe_open(str(vectors_path), framework="pt") as file:
                vectors, ids = file.get_tensor("vectors"), file.get_tensor("ids")
        except Exception as error:  # safetensors raises its own error types for a broken file
            raise ValueError(
                f"{str(vectors_path)!r} is not a readable safetensors file of vectors and ids: {error}"
            ) from error
        if tuple(vectors.shape) != (size, dim) or vectors.dtype != DTYPES[dtype] or tuple(ids.shape) != (size,):
            raise ValueError(
                f"{str(vectors_path)!r} holds vectors {tuple(vectors.shape)} {vectors.dtype} and ids "
                f"{tuple(ids.shape)}; {METADATA_FILE} says {size} x {dim} {dtype}."
            )
        ids = ids.numpy().astype(np.int64)

        saved_backend = metadata.get("backend")
        want_faiss = backend == "faiss" or (backend == "auto" and saved_backend != "torch" and faiss_available())
        if kind == "exact" or not want_faiss:
            if kind != "exact":
                why = "not used" if backend == "torch" else "missing"
                warnings.warn(
                    f"{str(folder)!r} is a {kind!r} faiss index but faiss is {why}: searching its vectors exactly "
                    "with torch instead.",
                    stacklevel=2,
                )
            if want_faiss:
                index = cls._faiss_build(np.ascontiguousarray(vectors.float().numpy()), "exact", dtype, {})
                return cls(dim=dim, ids=ids, backend="faiss", kind="exact", dtype=dtype, params={}, faiss_index=index,
                           source=source)  # fmt: skip
            torch_params = {"chunk_size": params.get("chunk_size", TORCH_PARAMS["chunk_size"])}
            return cls(dim=dim, ids=ids, backend="torch", kind="exact", dtype=dtype, params=torch_params,
                       vectors=vectors, source=source)  # fmt: skip
        faiss = _faiss()
        faiss_path = folder / FAISS_FILE
        if not faiss_path.is_file():
            raise FileNotFoundError(
                f"EmbeddingIndex folder {str(folder)!r} is a {kind!r} index but has no {FAISS_FILE}."
            )
        try:
            index = faiss.read_index(str(faiss_path))
        except RuntimeError as error:
            raise ValueError(f"{str(faiss_path)!r} is not a faiss index: {str(error).splitlines()[0]}") from error
        if index.ntotal != size or index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(
                f"{str(faiss_path)!r} holds {index.ntotal} vectors of dimension {index.d} (metric "
                f"{index.metric_type}); {METADATA_FILE} says {size} x {dim}, inner product."
            )
        cls._apply_search_params(index, kind, params)
        return cls(dim=dim, ids=ids, backend="faiss", kind=kind, dtype=dtype, params=params, faiss_index=index,
                   source=source)  # fmt: skip
