"""
What `FashionRetriever` and `ActivityRetriever` share: loading a checked checkpoint config, content keys of inputs,
top-k and argument checks, the device, and `_CachedRetriever` (the model in eval mode, the least-recently-used cache of
encodings, the model fingerprint that indexes record) with the index's first stage (`_first_stage`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import AutoConfig
from transformers.utils import logging as hf_logging

from xmodal.precision import resolve_precision, scoring_autocast
from xmodal.files import file_fingerprint, local_or_repo_id, looks_local
from xmodal.indexing import EmbeddingIndex


ImageInput = PIL.Image.Image | np.ndarray | str | os.PathLike


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_checkpoint_config(path: str | os.PathLike, expected_model_type: str | None = None, **kwargs):
    """
    The config of a saved folder or Hub repo id through `AutoConfig`, with errors that name `path`.

    Args:
        path: a local folder or a Hub repo id (`owner/name`).
        expected_model_type: `"fashionbert"` or `"map_ivr"`; a folder of another model is a `ValueError`.
        **kwargs: passed to `AutoConfig.from_pretrained` (`revision`, `local_files_only`, `token`...).

    Raises:
        FileNotFoundError: `path` looks local (`xmodal.files.looks_local`: exists, is absolute, starts with `.`/`~`
            or has more than one `/`) but has no `config.json`, or is neither a local folder nor a reachable repo.
        ValueError: the checkpoint is not of `expected_model_type`.
    """
    text, source = str(path), local_or_repo_id(path)
    if looks_local(path) and not (Path(source) / "config.json").is_file():
        what = "is not a folder" if not Path(source).is_dir() else "has no config.json"
        raise FileNotFoundError(f"checkpoint {text!r} {what}: pass a folder written by train.py / save_pretrained.")
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"could not load a checkpoint from {text!r}: {error}") from error
    if expected_model_type is not None and config.model_type != expected_model_type:
        raise ValueError(
            f"checkpoint {text!r} is a {config.model_type!r} model, not {expected_model_type!r}."
        )
    return config


def _content_key(item: Any) -> str:
    """A key that is equal for equal image content (PIL, array, tensor) or for the same unchanged file (path)."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(item, (str, os.PathLike)):
        digest.update(f"path:{file_fingerprint(item)}".encode())
    elif isinstance(item, PIL.Image.Image):
        digest.update(f"pil:{item.mode}:{item.size}".encode())
        digest.update(item.tobytes())
    else:
        array = np.ascontiguousarray(item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item))
        digest.update(f"array:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _top_k(scores: torch.Tensor, top_k: int, descending: bool) -> torch.Tensor:
    """Positions of the `top_k` best scores, ties to the lower position (stable sort)."""
    order = torch.sort(scores, descending=descending, stable=True).indices
    return order[:top_k]


def _check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")


def _check_first_stage_k(first_stage_k: int) -> None:
    if isinstance(first_stage_k, bool) or not isinstance(first_stage_k, int) or first_stage_k < 1:
        raise ValueError(f"`first_stage_k` must be a positive int, got {first_stage_k!r}.")


def _first_stage(index: EmbeddingIndex, query: torch.Tensor, count: int) -> torch.Tensor:
    """Row numbers of the index's `count` nearest to `query` (one vector), sorted back into gallery order."""
    positions, _ = index.search_positions(query.reshape(1, -1).float(), count)
    positions = positions[0][positions[0] >= 0]
    # Gallery order, so ties in the exact second-stage score still go to the lower gallery index.
    return torch.sort(torch.from_numpy(positions)).values


def _pick_device(device: str | torch.device | None) -> str | torch.device:
    """`device`, or CUDA when available, else CPU."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs only errors inside the block (e.g. no load report about expected unused weights)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


class _CachedRetriever:
    """
    What both retrievers share: the model in eval mode on its device, the precision it scores in, and a
    least-recently-used cache of encoded inputs keyed by their content (`_content_key`), at most `cache_size` entries.
    """

    def __init__(self, model: torch.nn.Module, cache_size: int, precision: str = "auto"):
        self.model = model.eval()
        # "bf16" or "float32", fixed at construction (`xmodal.precision.resolve_precision` on the model's device).
        self.precision = resolve_precision(precision, model.device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._fingerprint: str | None = None

    @property
    def model_fingerprint(self) -> str:
        """
        SHA-256 of the model's weights (every parameter and buffer: name, dtype, shape, values), computed once.
        Indexes record it (`EmbeddingIndex.source`) and `load_index` refuses an index built by other weights, whose
        embeddings would not be comparable with this model's queries.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = "sha256:" + digest.hexdigest()
        return self._fingerprint

    def _check_index_source(self, index: EmbeddingIndex, folder: str | os.PathLike) -> None:
        if index.source is not None and index.source != self.model_fingerprint:
            raise ValueError(
                f"the index in {str(folder)!r} was built by another model ({index.source[:19]}...; this model is "
                f"{self.model_fingerprint[:19]}...): its embeddings do not match this model's queries; build it again."
            )

    @staticmethod
    def _checkpoint(path: str | os.PathLike, model_type: str, **kwargs) -> tuple[Any, str]:
        """`(config, source)`: the checked config of a `model_type` folder or repo id, and what to load it from."""
        return load_checkpoint_config(path, model_type, **kwargs), local_or_repo_id(path)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The model's forward passes run inside this: bf16 autocast when `precision` is "bf16", else float32."""
        return scoring_autocast(self.precision, self.model.device)

    def clear_cache(self) -> None:
        """Forget every cached encoding."""
        with self._cache_lock:
            self._cache.clear()

    def _cached(self, keys: Sequence[str], encode: Callable[[list[int]], Sequence[Any]]) -> list[Any]:
        """
        The cached values of `keys`, in order; `encode(positions)` computes the values of the keys not cached (the
        first position of each, once), which are then cached. The least recently used entries beyond `cache_size`
        are dropped after the call.
        """
        missing: dict[str, int] = {}
        with self._cache_lock:  # the cache is shared by threads (a served demo); the encoding runs outside the lock
            found = {key: self._cache[key] for key in keys if key in self._cache}
        for position, key in enumerate(keys):
            if key not in found and key not in missing:
                missing[key] = position
        computed = dict(zip(missing, encode(list(missing.values())))) if missing else {}
        values = [computed[key] if key in computed else found[key] for key in keys]
        with self._cache_lock:
            for key, value in zip(keys, values):
                self._cache[key] = value
                self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return values
