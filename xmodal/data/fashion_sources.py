# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""Real fashion data for FashionBERT: any `datasets` dataset or local files, and Fashion-Gen HDF5.

Every loader returns rows with the canonical columns

- `image` (`datasets.Image`), `text` (caption, stripped), `product_id` (string), `subcategory`
  (string, or None when unknown), and `category` when a category column/key is available.

Fallbacks, documented and logged as warnings:

- no product id column -> `product_id` is the row index within its split (as a string), i.e. every
  row is its own product;
- no sub-category column -> `subcategory` is None (unknown): training and evaluation negatives are
  then drawn from random other products instead of the same sub-category.

Bad rows (a missing/undecodable image, Pillow's decompression-bomb guard, an empty or non-string
caption, a missing product id) raise a `ValueError` naming the split, row and file, or with
`on_bad_rows="skip"` are dropped; the count and the rows are logged, and returned with
`return_bad_rows=True`.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ._common import map_rows, map_to_columns, split_files


__all__ = [
    "BadRow",
    "FASHIONGEN_KEYS",
    "load_fashion_dataset",
    "load_fashion_streams",
    "load_fashiongen_h5",
    "load_fashiongen",
    "decode_fashiongen_text",
    "fashion_row_features",
    "image_file_problem",
]

logger = logging.getLogger(__name__)

_PROBLEM = "__problem"
_DATA_FILE_BUILDERS = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}), ".json": ("json", {}),
                       ".jsonl": ("json", {}), ".parquet": ("parquet", {}), ".arrow": ("arrow", {})}

# Keys of the official release (fashiongen_256_256_{train,validation}.h5): images (N, 256, 256, 3)
# uint8; descriptions and labels (N, 1) fixed-length byte strings; product ids (N, 1) integers.
FASHIONGEN_KEYS: dict[str, str] = {
    "image": "input_image",
    "text": "input_description",
    "product_id": "input_productID",
    "subcategory": "input_subcategory",
    "category": "input_category",
}
_FASHIONGEN_REQUIRED = ("image", "text", "product_id")


@dataclass(frozen=True)
class BadRow:
    """A row that was rejected.

    Attributes:
        split (`str`): its split.
        index (`int`): its index in the source split.
        reason (`str`): why it was rejected (naming the file when known).
    """

    split: str
    index: int
    reason: str


def fashion_row_features(with_category: bool):
    """`datasets.Features` of the canonical rows (image stored undecoded until the end of loading)."""
    import datasets

    columns = {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "subcategory": datasets.Value("string"),
        "product_id": datasets.Value("string"),
    }
    if with_category:
        columns["category"] = datasets.Value("string")
    return datasets.Features(columns)


# --------------------------------------------------------------------------------------------
# Row checks (shared by all sources)
# --------------------------------------------------------------------------------------------


def _image_problem(value, decode: bool) -> str | None:
    """Why an image cell cannot be used, or None. `value` is {"bytes", "path"} (undecoded Image)."""
    if value is None:
        return "missing image"
    if isinstance(value, (str, bytes)):  # a streamed row, before the Image cast: a path or the file's bytes
        value = {"path": value, "bytes": None} if isinstance(value, str) else {"bytes": value, "path": None}
    data, path = value.get("bytes"), value.get("path")
    if data is None and not path:
        return "missing image"
    where = f"image file {path!r}" if path else "image bytes"
    if data is not None and len(data) == 0:
        return f"{where}: empty (0 bytes)"
    if data is None and not os.path.isfile(path):
        return f"{where}: file not found"
    if data is None and os.path.getsize(path) == 0:
        return f"{where}: empty file (0 bytes)"
    if not decode:
        return None
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.load()  # full decode: catches truncated files; Pillow's pixel limit stays on
    except Image.DecompressionBombError as error:
        return f"{where}: refused by Pillow's decompression-bomb limit ({error})"
    except Exception as error:  # noqa: BLE001 - any decoder failure makes the row unusable
        return f"{where}: cannot be decoded ({type(error).__name__}: {error})"
    return None


def image_file_problem(path: str | os.PathLike) -> str | None:
    """
    Why the image file at `path` cannot be used (missing, empty, undecodable, or over Pillow's decompression-bomb
    limit), or None: the check every data path applies to its rows, for one file from elsewhere (an upload).
    """
    return _image_problem({"path": os.fspath(path), "bytes": None}, decode=True)


def _id_string(value) -> str | None:
    """A product id as a string: bytes decoded, integral floats without ".0", None/NaN/"" as None."""
    if value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = decode_fashiongen_text(value)
    elif isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None
        value = int(value) if float(value).is_integer() else value
    elif isinstance(value, np.integer):
        value = int(value)
    text = str(value).strip()
    return text or None


def _text_problem(value) -> str | None:
    if value is None:
        return "empty caption (null)"
    if not isinstance(value, str):
        return f"caption is not a string ({type(value).__name__}: {value!r:.40})"
    if not value.strip():
        return "empty caption (only whitespace)" if value else "empty caption"
    return None


def _canonical_batch(batch, indices, image_column, caption_column, subcategory_column, product_id_column,
                     category_column, validate_images):
    """Maps a batch of source rows to canonical rows plus a problem string per row (None = fine)."""
    n = len(indices)
    out = {"image": batch[image_column], "text": [], "subcategory": [], "product_id": [], _PROBLEM: []}
    if category_column is not None:
        out["category"] = [None if v is None else str(v).strip() or None for v in batch[category_column]]
    captions = batch[caption_column]
    subcats = batch[subcategory_column] if subcategory_column is not None else [None] * n
    pids = batch[product_id_column] if product_id_column is not None else [str(i) for i in indices]
    for k in range(n):
        problem = _image_problem(out["image"][k], validate_images) or _text_problem(captions[k])
        pid = _id_string(pids[k])
        if problem is None and pid is None:
            problem = "missing product id"
        out["text"].append(captions[k].strip() if isinstance(captions[k], str) else None)
        s = subcats[k]
        out["subcategory"].append(None if s is None or str(s).strip() == "" else str(s).strip())
        out["product_id"].append(pid)
        out[_PROBLEM].append(problem)
    return out


def _drop_bad_rows(dataset, split: str, source: str, on_bad_rows: str) -> tuple:
    """Raises on (or drops) the rows whose problem column is set; returns (dataset, [BadRow])."""
    import datasets

    problems = dataset[_PROBLEM]
    bad = [BadRow(split, i, p) for i, p in enumerate(problems) if p is not None]
    if bad and on_bad_rows == "raise":
        first = bad[0]
        raise ValueError(
            f"{len(bad)} bad row(s) in split {split!r} of {source}; first: row {first.index}: {first.reason}. "
            f"Fix the data or pass on_bad_rows='skip' to drop bad rows."
        )
    if bad:
        shown = ", ".join(f"{b.index} ({b.reason})" for b in bad[:10])
        logger.warning(
            "Skipped %d bad row(s) of %d in split %r of %s: %s%s", len(bad), len(problems), split, source,
            shown, " ..." if len(bad) > 10 else "",
        )
        bad_set = {b.index for b in bad}
        dataset = dataset.select([i for i in range(len(problems)) if i not in bad_set])
    dataset = dataset.remove_columns(_PROBLEM)
    return dataset.cast_column("image", datasets.Image()), bad


# --------------------------------------------------------------------------------------------
# Any datasets dataset / local files
# --------------------------------------------------------------------------------------------


def _load_raw_splits(dataset_name, dataset_config_name, train_file, validation_file, test_file, cache_dir, streaming=False):
    """{split: (Dataset, base directory for relative image paths or None, description)}; with `streaming`, the
    splits are `IterableDataset`s read as they are iterated."""
    import datasets

    def from_file(path: str, split: str):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _DATA_FILE_BUILDERS:
            raise ValueError(
                f"unsupported data file {path!r}: extension {ext!r}; use one of {sorted(_DATA_FILE_BUILDERS)}"
            )
        if not os.path.isfile(path):
            raise ValueError(f"data file {path!r} does not exist")
        builder, kwargs = _DATA_FILE_BUILDERS[ext]
        ds = datasets.load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir, streaming=streaming, **kwargs)
        return ds, os.path.dirname(os.path.abspath(path)), f"file {path!r}"

    if dataset_name is not None:
        if any(f is not None for f in (train_file, validation_file, test_file)):
            raise ValueError("pass either dataset_name or train_file/validation_file/test_file, not both")
        if os.path.isfile(dataset_name):
            return {"train": from_file(dataset_name, "train")}
        loaded = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming)
        if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
            loaded = {"train": loaded}
        base = os.path.abspath(dataset_name) if os.path.isdir(dataset_name) else None
        return {split: (ds, base, f"dataset {dataset_name!r}") for split, ds in loaded.items()}
    return {split: from_file(path, split) for split, path in split_files(train_file, validation_file, test_file).items()}


def _absolute_paths(batch, column: str, base: str):
    return {column: [p if p is None or os.path.isabs(p) else os.path.join(base, p) for p in batch[column]]}


def _check_column(ds, column, argument: str, split: str, source: str):
    if column not in ds.column_names:
        raise ValueError(
            f"column {column!r} ({argument}) not found in split {split!r} of {source}. "
            f"Available columns: {ds.column_names}"
        )


def _optional_column(ds, column, default: str | None, argument: str, split: str, source: str, fallback: str):
    """The column to use for an optional role, or None (fallback) when the default name is absent."""
    if column is None:
        return None
    if column in ds.column_names:
        return column
    if column == default:
        logger.warning("No %r column in split %r of %s: %s.", column, split, source, fallback)
        return None
    _check_column(ds, column, argument, split, source)  # an explicitly named column must exist


def _checked_rows(ds, split: str, base: str | None, source: str, image_column: str, caption_column: str,
                  subcategory_column: str | None, product_id_column: str | None, category_column: str | None,
                  validate_images: bool, num_proc: int | None):
    """One split (a `Dataset` or a streamed `IterableDataset`) as canonical rows with a problem column: the columns
    checked, relative image paths resolved against `base`, every row checked (`_canonical_batch`)."""
    import datasets

    _check_column(ds, image_column, "image_column", split, source)
    _check_column(ds, caption_column, "caption_column", split, source)
    caption_type = ds.features[caption_column]
    if not (isinstance(caption_type, datasets.Value) and caption_type.dtype in ("string", "large_string")):
        raise ValueError(
            f"column {caption_column!r} (caption_column) of split {split!r} of {source} must hold text, "
            f"it has type {caption_type}"
        )
    sub_col = _optional_column(ds, subcategory_column, "subcategory", "subcategory_column", split, source,
                               "sub-categories unknown, negatives are drawn from random other products")
    pid_col = _optional_column(ds, product_id_column, "product_id", "product_id_column", split, source,
                               "product_id = row index (every row its own product)")
    if category_column is not None:
        _check_column(ds, category_column, "category_column", split, source)

    image_type = ds.features[image_column]
    if isinstance(image_type, datasets.Value) and image_type.dtype in ("string", "large_string"):
        if base is not None:
            kept = {"features": ds.features} if isinstance(ds, datasets.IterableDataset) else {}  # a stream's map drops them
            ds = map_rows(ds, _absolute_paths, batched=True, fn_kwargs={"column": image_column, "base": base},
                          desc="Resolving image paths", **kept)
    elif not (isinstance(image_type, datasets.Image) or (
            isinstance(image_type, datasets.Value) and image_type.dtype in ("binary", "large_binary"))
            or isinstance(image_type, dict)):
        raise ValueError(
            f"column {image_column!r} (image_column) of split {split!r} of {source} must hold images, image "
            f"paths or image bytes, it has type {image_type}"
        )
    try:
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"column {image_column!r} (image_column) of split {split!r} of {source} cannot be read as images: {error}"
        ) from error

    features = fashion_row_features(category_column is not None)
    features["image"] = datasets.Image(decode=False)
    features[_PROBLEM] = datasets.Value("string")
    ds = map_to_columns(
        ds,
        _canonical_batch,
        features,
        num_proc,
        with_indices=True,
        fn_kwargs=dict(image_column=image_column, caption_column=caption_column, subcategory_column=sub_col,
                       product_id_column=pid_col, category_column=category_column,
                       validate_images=validate_images),
        desc=f"Checking {split} rows",
    )
    return ds


def load_fashion_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
    image_column: str = "image",
    caption_column: str = "text",
    subcategory_column: str | None = "subcategory",
    product_id_column: str | None = "product_id",
    category_column: str | None = None,
    on_bad_rows: str = "raise",
    cache_dir: str | None = None,
    validate_images: bool = True,
    num_proc: int | None = None,
    return_bad_rows: bool = False,
):
    """Loads a fashion image-text dataset into the canonical FashionBERT rows.

    Args:
        dataset_name: a dataset on the Hub (needs network), a local dataset folder (e.g. an
            `imagefolder` with `metadata.jsonl`/`metadata.csv`, or a folder of csv/json/parquet files),
            or a single local data file. Exclusive with the `*_file` arguments.
        dataset_config_name: configuration name for `datasets.load_dataset`.
        train_file, validation_file, test_file: local csv/tsv/json/jsonl/parquet/arrow files, one per
            split. Image cells may be paths (relative paths are resolved against the file's folder,
            or against `dataset_name` when it is a folder), raw bytes, or `datasets` image structs.
        image_column, caption_column: required columns.
        subcategory_column, product_id_column: optional columns; when a column of the *default* name
            is absent, or the argument is None, the fallback applies (module docstring). A non-default
            name that is absent is an error.
        category_column: optional column copied to `category` (not present in the output when None).
        on_bad_rows: "raise" (default) or "skip".
        cache_dir: `datasets` cache folder.
        validate_images: fully decode every image once (catches truncated/corrupt files; cached by
            `datasets` for file-backed data). False only checks that an image is present.
        num_proc: processes for the validation pass.
        return_bad_rows: also return {split: [BadRow, ...]} of the skipped rows.

    Returns:
        `datasets.DatasetDict` with columns image, text, subcategory, product_id (+ category), or
        `(DatasetDict, bad_rows)` when `return_bad_rows`.

    Raises:
        ValueError: missing/unsupported source, missing column (the message lists the available
            ones), a caption column that is not text, an image column of another type, or bad rows
            when `on_bad_rows="raise"` (naming the split, row and file).
    """
    import datasets

    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'skip', got {on_bad_rows!r}")
    raw = _load_raw_splits(dataset_name, dataset_config_name, train_file, validation_file, test_file, cache_dir)
    out, all_bad = {}, {}
    columns = dict(image_column=image_column, caption_column=caption_column, subcategory_column=subcategory_column,
                   product_id_column=product_id_column, category_column=category_column)
    for split, (ds, base, source) in raw.items():
        ds = _checked_rows(ds, split, base, source, validate_images=validate_images, num_proc=num_proc, **columns)
        out[split], all_bad[split] = _drop_bad_rows(ds, split, source, on_bad_rows)
    result = datasets.DatasetDict(out)
    return (result, all_bad) if return_bad_rows else result


def load_fashion_streams(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    image_column: str = "image",
    caption_column: str = "text",
    subcategory_column: str | None = "subcategory",
    product_id_column: str | None = "product_id",
    on_bad_rows: str = "raise",
    cache_dir: str | None = None,
) -> dict:
    """
    The splits of `load_fashion_dataset`'s sources (`dataset_name`, or `train_file` as "train") as streams,
    `{split: datasets.IterableDataset}`: read as they are iterated, never whole on disk. Same canonical rows (`image`
    left undecoded: `{"bytes", "path"}`), same column checks, and the same row checks except the full image decode
    (an undecodable image fails where it is decoded). A bad row raises a `ValueError` naming it when it is read, or
    with `on_bad_rows="skip"` is dropped with a warning; `product_id` falls back to the row's index in the stream.
    """
    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'skip', got {on_bad_rows!r}")
    raw = _load_raw_splits(dataset_name, dataset_config_name, train_file, None, None, cache_dir, streaming=True)
    columns = dict(image_column=image_column, caption_column=caption_column, subcategory_column=subcategory_column,
                   product_id_column=product_id_column, category_column=None)
    streams = {}
    for split, (ds, base, source) in raw.items():
        if ds.features is None:  # csv / json streams know their columns only once a row is read
            ds = ds._resolve_features()
        ds = _checked_rows(ds, split, base, source, validate_images=False, num_proc=None, **columns)
        check = _raise_on_problem if on_bad_rows == "raise" else _warn_on_problem
        streams[split] = ds.filter(check, input_columns=[_PROBLEM], with_indices=True, fn_kwargs={"split": split, "source": source})
        streams[split] = streams[split].remove_columns(_PROBLEM)
    return streams


def _raise_on_problem(problem: str | None, index: int, split: str, source: str) -> bool:
    if problem is not None:
        raise ValueError(f"bad row in split {split!r} of {source} (streamed): row {index}: {problem}. Fix the data or "
                         "pass on_bad_rows='skip' to drop bad rows.")  # fmt: skip
    return True


def _warn_on_problem(problem: str | None, index: int, split: str, source: str) -> bool:
    if problem is not None:
        logger.warning("Skipped bad row %d of split %r of %s (streamed): %s", index, split, source, problem)
    return problem is None


# --------------------------------------------------------------------------------------------
# Fashion-Gen HDF5
# --------------------------------------------------------------------------------------------


def decode_fashiongen_text(value) -> str:
    """Decodes one Fashion-Gen string cell: bytes as UTF-8, else Windows-1252 (the release's
    descriptions contain cp1252 punctuation such as 0x92), else Latin-1 (never fails); strips NULs
    and surrounding whitespace. Accepts (1,) arrays, bytes, numpy bytes and str."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, (bytes, np.bytes_)):
        raw = bytes(value).rstrip(b"\x00")
        for encoding in ("utf-8", "cp1252"):
            try:
                return raw.decode(encoding).strip()
            except UnicodeDecodeError:
                pass
        return raw.decode("latin-1").strip()
    return str(value).strip()


# What h5py raises on a corrupt file (damaged headers, heaps, B-trees or chunks): the HDF5 library's errors come
# through as OSError, KeyError, RuntimeError, TypeError or ValueError depending on where the damage is met.
_HDF5_ERRORS = (OSError, KeyError, RuntimeError, TypeError, ValueError)


def _inspect_fashiongen_h5(path: str) -> tuple[int, dict[str, str], tuple[int, ...]]:
    """Validates the file's schema; returns (num_rows, {role: key present}, shape of one image). Every failure is a
    ValueError naming the file (a corrupt file's h5py errors included)."""
    import h5py

    if not os.path.isfile(path):
        raise ValueError(f"Fashion-Gen file {path!r} does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path!r} is not a readable HDF5 file: {error}") from error
    try:
        with handle as h5:
            return _inspect_open_fashiongen_h5(path, h5)
    except ValueError as error:
        if str(error).startswith(repr(path)):
            raise  # ours: it names the file and key already
        raise ValueError(f"{path!r}: corrupt HDF5 file ({type(error).__name__}: {error})") from error
    except _HDF5_ERRORS as error:
        raise ValueError(f"{path!r}: corrupt HDF5 file ({type(error).__name__}: {error})") from error


def _inspect_open_fashiongen_h5(path: str, h5) -> tuple[int, dict[str, str], tuple[int, ...]]:
    """The schema checks of `_inspect_fashiongen_h5` on the open file."""
    import h5py

    keys = {key if isinstance(key, str) else repr(key) for key in h5.keys()}
    present = {role: key for role, key in FASHIONGEN_KEYS.items() if key in keys}
    for role in _FASHIONGEN_REQUIRED:
        if role not in present:
            raise ValueError(
                f"{path!r}: missing key {FASHIONGEN_KEYS[role]!r} (required); keys present: {sorted(keys)}"
            )
    images = h5[present["image"]]
    if not isinstance(images, h5py.Dataset) or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", None)
        raise ValueError(
            f"{path!r}: key {present['image']!r} must be a (N, H, W, 3) uint8 array, got shape {shape} dtype {dtype}"
        )
    num_rows = images.shape[0]
    pixels = int(images.shape[1]) * int(images.shape[2])
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{path!r}: key {present['image']!r} holds {images.shape[1]}x{images.shape[2]} images, over Pillow's "
            f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels"
        )
    for role, key in present.items():
        if role == "image":
            continue
        data = h5[key]
        if not isinstance(data, h5py.Dataset) or data.ndim not in (1, 2) or (data.ndim == 2 and data.shape[1] != 1):
            raise ValueError(
                f"{path!r}: key {key!r} must have shape (N,) or (N, 1), got {getattr(data, 'shape', type(data).__name__)}"
            )
        if data.shape[0] != num_rows:
            raise ValueError(
                f"{path!r}: key {key!r} has {data.shape[0]} rows but {present['image']!r} has {num_rows}"
            )
        kind = data.dtype.kind
        allowed = "SOUiu" if role == "product_id" else "SOU"
        if kind not in allowed:
            raise ValueError(f"{path!r}: key {key!r} must hold strings, got dtype {data.dtype}")
    for role in ("subcategory", "category"):
        if role not in present:
            logger.warning("%r has no %r key: %s unknown.", path, FASHIONGEN_KEYS[role], role)
    return num_rows, present, tuple(int(size) for size in images.shape[1:])


def _fashiongen_rows(path: str, ranges: list, present: dict, signature: str):
    """Generator of canonical rows (+ problem column) from row ranges of a Fashion-Gen file.

    A chunk that cannot be read (a corrupt compressed chunk, a damaged B-tree) is a ValueError naming the file, key
    and rows; a row whose cells cannot be turned into a canonical row is a bad row (raise or skip, by its index)."""
    import h5py

    del signature  # only part of the cache fingerprint (file size and modification time)
    with h5py.File(path, "r") as h5:
        for start, stop in ranges:
            chunk = {}
            for role, key in present.items():
                try:
                    chunk[role] = h5[key][start:stop]
                except _HDF5_ERRORS as error:  # e.g. a corrupt compressed chunk
                    raise ValueError(
                        f"{path!r}: cannot read key {key!r} rows {start}-{stop - 1} "
                        f"({type(error).__name__}: {error})"
                    ) from error
            for k in range(stop - start):
                try:
                    yield _fashiongen_row(path, chunk, k, start + k, present)
                except Exception as error:  # noqa: BLE001 - a damaged row is a bad row, whatever broke on it
                    out = {"image": {"bytes": b"", "path": None}, "text": None, "subcategory": None,
                           "product_id": None, _PROBLEM: f"{path!r} row {start + k}: cannot be read "
                           f"({type(error).__name__}: {error})"}
                    if "category" in present:
                        out["category"] = None
                    yield out


def _fashiongen_row(path: str, chunk: dict, k: int, row: int, present: dict) -> dict:
    """Row `k` of a chunk as a canonical row (+ problem column)."""
    problem = None
    text = decode_fashiongen_text(chunk["text"][k])
    if not text:
        problem = f"{path!r} key {present['text']!r} row {row}: empty description"
    pid = _id_string(np.asarray(chunk["product_id"][k]).reshape(-1)[0])
    if problem is None and pid is None:
        problem = f"{path!r} key {present['product_id']!r} row {row}: missing product id"
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chunk["image"][k]), "RGB").save(buffer, format="PNG", compress_level=1)
    out = {
        "image": {"bytes": buffer.getvalue(), "path": None},
        "text": text,
        "subcategory": (decode_fashiongen_text(chunk["subcategory"][k]) or None) if "subcategory" in chunk else None,
        "product_id": pid,
        _PROBLEM: problem,
    }
    if "category" in present:
        out["category"] = decode_fashiongen_text(chunk["category"][k]) or None
    return out


def load_fashiongen_h5(
    path: str,
    split_name: str = "train",
    on_bad_rows: str = "raise",
    cache_dir: str | None = None,
    num_proc: int | None = None,
    chunk_size: int = 512,
    return_bad_rows: bool = False,
):
    """Reads one file of the official Fashion-Gen release (`fashiongen_256_256_{train,validation}.h5`).

    The file is read lazily with h5py in chunks of `chunk_size` rows and written once to the
    `datasets` Arrow cache through `Dataset.from_generator` (images stored as lossless PNG); later
    calls reuse the cache (its fingerprint includes the file's size and modification time).

    Keys (`FASHIONGEN_KEYS`): input_image (N, H, W, 3) uint8 RGB; input_description, input_productID
    required; input_subcategory, input_category optional (unknown when absent). Strings are (N,) or
    (N, 1) byte strings decoded by `decode_fashiongen_text`.

    Args:
        path: the .h5 file.
        split_name: split name of the returned dataset.
        on_bad_rows: "raise" or "skip" for rows with an empty description.
        cache_dir: `datasets` cache folder.
        num_proc: processes for the conversion (the file is sharded by row ranges).
        chunk_size: rows read per h5py access (fewer when that many images would exceed ~128 MB).
        return_bad_rows: also return the list of skipped `BadRow`s.

    Returns:
        `datasets.Dataset` with image, text, subcategory, product_id (+ category when the key exists),
        or `(Dataset, bad_rows)`.

    Raises:
        ValueError: a file that is not HDF5 or is corrupt (h5py's errors on damaged headers or chunks
            included), a missing required key, a key of the wrong shape/dtype or row count, images over
            Pillow's decompression-bomb pixel limit (each naming the file and key), or a bad row with
            `on_bad_rows="raise"` (an empty description, a missing product id, a row that cannot be read).
    """
    import datasets

    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'skip', got {on_bad_rows!r}")
    path = os.path.abspath(path)
    num_rows, present, image_shape = _inspect_fashiongen_h5(path)
    if num_rows == 0:
        raise ValueError(f"Fashion-Gen file {path!r} holds no rows (its datasets have length 0).")
    features = fashion_row_features("category" in present)
    features["image"] = datasets.Image(decode=False)
    features[_PROBLEM] = datasets.Value("string")
    chunk_size = max(1, min(chunk_size, 2**27 // max(1, int(np.prod(image_shape)))))  # <= ~128 MB of pixels a read
    ranges = [(s, min(s + chunk_size, num_rows)) for s in range(0, num_rows, chunk_size)]
    stat = os.stat(path)
    try:
        ds = datasets.Dataset.from_generator(
            _fashiongen_rows,
            features=features,
            cache_dir=cache_dir,
            gen_kwargs={"path": path, "ranges": ranges, "present": present,
                        "signature": f"{stat.st_size}-{stat.st_mtime_ns}"},
            num_proc=num_proc if num_proc and len(ranges) > 1 else None,
            split=datasets.NamedSplit(split_name),
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # datasets wraps errors raised while generating; surface ours (they name the file and key).
        cause = error.__cause__
        if isinstance(cause, ValueError):
            raise ValueError(str(cause)) from error
        raise
    ds, bad = _drop_bad_rows(ds, split_name, f"Fashion-Gen file {path!r}", on_bad_rows)
    return (ds, bad) if return_bad_rows else ds


def load_fashiongen(
    path: str,
    on_bad_rows: str = "raise",
    cache_dir: str | None = None,
    num_proc: int | None = None,
):
    """Fashion-Gen as a `DatasetDict`: `path` is a folder holding `fashiongen_256_256_train.h5` and/or
    `fashiongen_256_256_validation.h5` (splits "train" / "validation"; the papers evaluate on the
    validation file), or one .h5 file (its split named after the file: "validation" when the name
    contains it, else "train")."""
    import datasets

    if os.path.isdir(path):
        files = {split: os.path.join(path, f"fashiongen_256_256_{split}.h5") for split in ("train", "validation")}
        files = {split: f for split, f in files.items() if os.path.isfile(f)}
        if not files:
            raise ValueError(
                f"no fashiongen_256_256_train.h5 or fashiongen_256_256_validation.h5 in folder {path!r}; "
                f"files there: {sorted(os.listdir(path))[:20]}"
            )
    else:
        files = {"validation" if "validation" in os.path.basename(path) else "train": path}
    return datasets.DatasetDict({
        split: load_fashiongen_h5(f, split, on_bad_rows=on_bad_rows, cache_dir=cache_dir, num_proc=num_proc)
        for split, f in files.items()
    })
