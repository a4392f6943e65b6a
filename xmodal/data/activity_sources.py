"""Real MAP-IVR feature sources: any `datasets` dataset with feature columns, and the APIVR release pickles.

Every loader returns a `datasets.DatasetDict` whose rows are the project's activity rows:

- `image_features`: `(Di,)` float32 query-image feature u.
- `video_features`: `(D,)` video vector or `(K, D)` bag of proposal features.
- `proposal_scores`: `(K,)` proposal confidences (optional).
- `label`: activity class id in `[0, num_labels)`.

Rows are validated before anything trains on them: NaN/inf features, a feature of the wrong size, an empty
proposal bag, scores that do not match the bag, and labels out of range raise a `ValueError` naming the split,
row and column (`on_bad_rows="raise"`), or the rows are dropped and counted (`on_bad_rows="skip"`).

APIVR pickles are read with `NumpyOnlyUnpickler`, which resolves only the globals that numpy arrays need; a
pickle that names anything else (for instance `os.system`) is refused before any of it runs.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._common import split_files


__all__ = [
    "UnsafePickleError",
    "NumpyOnlyUnpickler",
    "load_numpy_pickle",
    "load_activity_dataset",
    "load_apivr_features",
    "validate_activity_dataset",
    "activity_arrays",
]

logger = logging.getLogger(__name__)

IMAGE_FEATURES, VIDEO_FEATURES, PROPOSAL_SCORES, LABEL = "image_features", "video_features", "proposal_scores", "label"


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------------------


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside `NumpyOnlyUnpickler`'s allow-list (nothing of it was run)."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays (and dicts / lists / tuples of them) and nothing else.

    `find_class` resolves only:

    - `numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`: an array under protocols 0-4;
    - `numpy.core.numeric._frombuffer`: an array under protocol 5;
    - `numpy.core.multiarray.scalar`: a numpy scalar (e.g. a label stored as `np.int64`);
    - `_codecs.encode`: how protocol 2 stores the array's bytes (it only turns a str into bytes);

    each also under numpy 2's `numpy._core` name. Dicts, lists, tuples, strings and numbers are built by
    pickle opcodes and need no global. Any other global raises `UnsafePickleError` (a
    `pickle.UnpicklingError`) naming it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def __init__(self, file, source: str = "<pickle>", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name}; only numpy arrays (and dicts, lists "
                "and tuples of them) may be stored in an APIVR feature pickle"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 renamed the package
        return super().find_class(module, name)


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """Loads a pickle of numpy arrays with `NumpyOnlyUnpickler` (`encoding="latin1"` reads Python 2 pickles)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            return NumpyOnlyUnpickler(f, source=path, encoding="latin1").load()
        except UnsafePickleError:
            raise
        except Exception as err:  # truncated, or not a pickle at all
            raise ValueError(f"{path}: not a readable pickle of numpy arrays ({type(err).__name__}: {err})") from err


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


class _RowChecker:
    """Checks activity rows one by one; the first row of each kind fixes the expected sizes."""

    def __init__(self, split: str, columns: Mapping[str, str], num_labels: int | None, image_dim=None, video_dim=None):
        self.split, self.columns, self.num_labels = split, columns, num_labels
        self.image_dim, self.video_dim, self.video_ndim = image_dim, video_dim, None

    def _where(self, row: int, key: str) -> str:
        return f"{self.split}: row {row}, column {self.columns[key]!r}"

    def problem(self, row: int, image: Any, video: Any, scores: Any, label: Any) -> str | None:
        """Returns a message naming the row and column of the first problem, or None."""
        try:
            image = np.asarray(image, dtype=np.float32)
        except (TypeError, ValueError):
            return f"{self._where(row, IMAGE_FEATURES)}: not a numeric vector"
        if image.ndim != 1 or image.shape[0] == 0:
            return f"{self._where(row, IMAGE_FEATURES)}: expected a non-empty vector, got shape {image.shape}"
        if self.image_dim is not None and image.shape[0] != self.image_dim:
            return f"{self._where(row, IMAGE_FEATURES)}: expected {self.image_dim} values, got {image.shape[0]}"
        if not np.isfinite(image).all():
            return f"{self._where(row, IMAGE_FEATURES)}: contains NaN or inf"
        try:
            video = np.asarray(video, dtype=np.float32)
        except (TypeError, ValueError):
            return f"{self._where(row, VIDEO_FEATURES)}: not a numeric vector or (K, D) proposal bag (ragged?)"
        if video.ndim not in (1, 2):
            return f"{self._where(row, VIDEO_FEATURES)}: expected a vector (D,) or a proposal bag (K, D), got shape {video.shape}"
        if video.shape[0] == 0 or video.size == 0:
            return f"{self._where(row, VIDEO_FEATURES)}: empty proposal bag (shape {video.shape})"
        if self.video_ndim is not None and video.ndim != self.video_ndim:
            return f"{self._where(row, VIDEO_FEATURES)}: mixes vectors and proposal bags (this row has {video.ndim} dims, earlier rows {self.video_ndim})"
        if self.video_dim is not None and video.shape[-1] != self.video_dim:
            return f"{self._where(row, VIDEO_FEATURES)}: expected feature size {self.video_dim}, got {video.shape[-1]}"
        if not np.isfinite(video).all():
            return f"{self._where(row, VIDEO_FEATURES)}: contains NaN or inf"
        if scores is not None:
            try:
                scores = np.asarray(scores, dtype=np.float32)
            except (TypeError, ValueError):
                return f"{self._where(row, PROPOSAL_SCORES)}: not numeric"
            if video.ndim != 2 or scores.ndim not in (1, 2) or scores.shape[0] != video.shape[0]:
                return f"{self._where(row, PROPOSAL_SCORES)}: expected one score (or one row of class scores) per proposal ({video.shape[0] if video.ndim == 2 else 'no bag'}), got shape {scores.shape}"
            if not np.isfinite(scores).all():
                return f"{self._where(row, PROPOSAL_SCORES)}: contains NaN or inf"
        try:
            integral = not isinstance(label, (bool, np.bool_)) and float(label).is_integer()
        except (TypeError, ValueError):
            integral = False
        if not integral:
            return f"{self._where(row, LABEL)}: expected an integer class id, got {label!r}"
        if label < 0 or (self.num_labels is not None and label >= self.num_labels):
            return f"{self._where(row, LABEL)}: class id {int(label)} is out of range [0, {self.num_labels if self.num_labels is not None else 'inf'})"
        # Only rows that pass fix the expected sizes, so one bad first row does not condemn the rest.
        self.image_dim, self.video_dim, self.video_ndim = image.shape[0], video.shape[-1], video.ndim
        return None


def _check_on_bad_rows(on_bad_rows: str) -> None:
    if on_bad_rows not in ("raise", "skip"):
        raise ValueError(f"on_bad_rows must be 'raise' or 'skip', got {on_bad_rows!r}")


def _report_skipped(split: str, bad: list[tuple[int, str]]) -> None:
    if bad:
        shown = "; ".join(message for _, message in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        logger.warning("%s: skipped %d bad row(s): %s%s", split, len(bad), shown, more)


def validate_activity_dataset(
    dataset,
    split: str = "dataset",
    num_labels: int | None = None,
    on_bad_rows: str = "raise",
    batch_size: int = 256,
    column_names: Mapping[str, str] | None = None,
):
    """Validates activity rows (standard column names); returns `(dataset, skipped_rows)`.

    Args:
        dataset: a `datasets.Dataset` with `image_features`, `video_features`, `label` (+ `proposal_scores`).
        split: name used in messages.
        num_labels: labels must be in `[0, num_labels)` (default: the `label` ClassLabel's size, else unchecked
            above).
        on_bad_rows: `"raise"` (ValueError naming split, row and column) or `"skip"` (drop and log a count).
        column_names: standard name -> the caller's original column name, for messages.

    Returns:
        the dataset (bad rows removed with `"skip"`) and the list of `(row, message)` of removed rows.
    """
    _check_on_bad_rows(on_bad_rows)
    missing = [c for c in (IMAGE_FEATURES, VIDEO_FEATURES, LABEL) if c not in dataset.column_names]
    if missing:
        names = [(column_names or {}).get(c, c) for c in missing]
        raise ValueError(f"{split}: missing column(s) {names}; the dataset has {dataset.column_names}")
    if num_labels is None:
        num_labels = getattr(dataset.features[LABEL], "num_classes", None)
    columns = {c: (column_names or {}).get(c, c) for c in (IMAGE_FEATURES, VIDEO_FEATURES, PROPOSAL_SCORES, LABEL)}
    checker = _RowChecker(split, columns, num_labels)
    has_scores = PROPOSAL_SCORES in dataset.column_names
    bad: list[tuple[int, str]] = []
    view = dataset.with_format("numpy")
    for start in range(0, len(dataset), batch_size):
        batch = view[start : start + batch_size]
        for offset in range(len(batch[LABEL])):
            row = start + offset
            scores = batch[PROPOSAL_SCORES][offset] if has_scores else None
            message = checker.problem(row, batch[IMAGE_FEATURES][offset], batch[VIDEO_FEATURES][offset], scores, batch[LABEL][offset])
            if message is None:
                continue
            if on_bad_rows == "raise":
                raise ValueError(message)
            bad.append((row, message))
    if bad:
        _report_skipped(split, bad)
        drop = {row for row, _ in bad}
        dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
    return dataset, bad


# ----------------------------------------------------------------------------------------------------------
# Any `datasets` dataset
# ----------------------------------------------------------------------------------------------------------


def _load_raw(dataset_name, dataset_config_name, train_file, validation_file, test_file, cache_dir):
    from datasets import DatasetDict, load_dataset, load_from_disk

    if dataset_name is not None:
        if os.path.isdir(dataset_name) and (
            os.path.exists(os.path.join(dataset_name, "dataset_dict.json"))
            or os.path.exists(os.path.join(dataset_name, "state.json"))
        ):
            loaded = load_from_disk(dataset_name)  # a folder written by save_to_disk
        else:
            loaded = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    data_files = split_files(train_file, validation_file, test_file)
    extensions = {os.path.splitext(f)[1].lstrip(".").lower() for f in data_files.values()}
    if len(extensions) != 1:
        raise ValueError(f"train/validation/test files must have the same extension, got {sorted(extensions)}")
    extension = extensions.pop()
    extension = {"jsonl": "json", "pq": "parquet"}.get(extension, extension)
    if extension not in ("json", "parquet", "arrow", "csv"):
        raise ValueError(f"unsupported feature file extension {extension!r}: use json/jsonl, parquet or arrow")
    return load_dataset(extension, data_files=data_files, cache_dir=cache_dir)


def load_activity_dataset(
    dataset_name: str | None = None,
    train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
    dataset_config_name: str | None = None,
    image_features_column: str = IMAGE_FEATURES,
    video_features_column: str = VIDEO_FEATURES,
    proposal_scores_column: str | None = PROPOSAL_SCORES,
    label_column: str = LABEL,
    num_labels: int | None = None,
    on_bad_rows: str = "raise",
    cache_dir: str | None = None,
):
    """Loads a dataset of precomputed MAP-IVR features and maps it to the project's activity rows.

    Args:
        dataset_name: a dataset name or local path for `datasets.load_dataset`, or a folder written by
            `save_to_disk`.
        train_file, validation_file, test_file: local json/jsonl/parquet/arrow files (instead of `dataset_name`).
        dataset_config_name: the dataset's configuration.
        image_features_column, video_features_column, label_column: the caller's column names.
        proposal_scores_column: the confidences column; optional: when absent from the data it is ignored if it
            has the default name, and an error otherwise. `None` ignores scores.
        num_labels: labels must be in `[0, num_labels)`. Default: the label column's ClassLabel size, else
            `1 + the largest training label` (so a test label unseen in training is an error).
        on_bad_rows: `"raise"` or `"skip"` (bad rows dropped, a warning logs how many and which).
        cache_dir: `datasets` cache.

    Returns:
        `datasets.DatasetDict` with columns `image_features`, `video_features`, `label` (+ `proposal_scores`)
        and any other columns of the source.
    """
    _check_on_bad_rows(on_bad_rows)
    raw = _load_raw(dataset_name, dataset_config_name, train_file, validation_file, test_file, cache_dir)
    renames = {
        image_features_column: IMAGE_FEATURES,
        video_features_column: VIDEO_FEATURES,
        label_column: LABEL,
    }
    for split, dataset in raw.items():
        missing = [c for c in renames if c not in dataset.column_names]
        if missing:
            raise ValueError(f"{split}: missing column(s) {missing}; the dataset has {dataset.column_names}")
    if proposal_scores_column is not None:
        present = [proposal_scores_column in d.column_names for d in raw.values()]
        if any(present):
            if not all(present):
                raise ValueError(f"column {proposal_scores_column!r} is present in some splits only")
            renames[proposal_scores_column] = PROPOSAL_SCORES
        elif proposal_scores_column != PROPOSAL_SCORES:
            raise ValueError(f"missing column {proposal_scores_column!r} (proposal_scores_column); columns are {next(iter(raw.values())).column_names}")
    original = {standard: source for source, standard in renames.items()}
    if num_labels is None:
        first = raw["train"] if "train" in raw else next(iter(raw.values()))
        num_labels = getattr(first.features[label_column], "num_classes", None)
        if num_labels is None:
            labels = [v for v in first[label_column] if isinstance(v, (int, np.integer))]
            num_labels = int(max(labels)) + 1 if labels else None
    out = {}
    for split, dataset in raw.items():
        renamed = {k: v for k, v in renames.items() if k != v}
        clashing = [v for v in renamed.values() if v in dataset.column_names]
        if clashing:
            raise ValueError(f"{split}: cannot rename to {clashing}: the dataset already has columns with those names")
        dataset = dataset.rename_columns(renamed) if renamed else dataset
        out[split], _ = validate_activity_dataset(dataset, split, num_labels, on_bad_rows, column_names=original)
    from datasets import DatasetDict

    return DatasetDict(out)


# ----------------------------------------------------------------------------------------------------------
# APIVR release layout
# ----------------------------------------------------------------------------------------------------------

_APIVR_NAME = re.compile(r"^(?P<prefix>.*?)[_\-.]?(?P<kind>v|i|label|labels)$", re.IGNORECASE)
_PICKLE_EXTENSIONS = (".pkl", ".pickle", ".p")
_SPLIT_ALIASES = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "validation", "valid": "validation", "validation": "validation"}


def _named_arrays(path: str) -> dict[str, Any]:
    """Arrays in one pickle: a single array is named after the file, a dict contributes its keys."""
    content = load_numpy_pickle(path)
    if isinstance(content, Mapping):
        bad = [k for k in content if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{path}: dictionary keys must be array names (str), got {bad[:3]}")
        return dict(content)
    return {os.path.splitext(os.path.basename(path))[0]: content}


def _split_of(prefix: str) -> str:
    tokens = [t for t in re.split(r"[_\-.]", prefix.lower()) if t]
    for token in reversed(tokens):
        if token in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[token]
    return prefix or "train"


def _as_labels(labels: np.ndarray, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim == 2:
        # one-hot rows -> class ids
        if not (np.isin(labels, (0, 1)).all() and (labels.sum(1) == 1).all()):
            raise ValueError(f"{where}: 2-D labels must be one-hot rows, got shape {labels.shape} with other values")
        labels = labels.argmax(1)
    if labels.ndim != 1:
        raise ValueError(f"{where}: labels must be (N,) class ids or (N, C) one-hot, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.number) or not np.all(np.isfinite(labels)) or not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"{where}: labels must be integer class ids")
    return labels.astype(np.int64)


def _numeric_array(value: Any, where: str, ndims: tuple[int, ...]) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{where}: expected a numpy array, got {type(value).__name__}")
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise ValueError(f"{where}: expected a numeric array, got dtype {value.dtype}")
    if value.ndim not in ndims:
        raise ValueError(f"{where}: expected {' or '.join(f'{n}-D' for n in ndims)} array, got shape {value.shape}")
    return value


def load_apivr_features(
    folder_or_files: str | os.PathLike | Sequence[str | os.PathLike],
    num_labels: int | None = None,
    on_bad_rows: str = "raise",
):
    """Loads the APIVR release layout: pickles of numpy arrays named `<split>_v`, `<split>_i`, `<split>_label`.

    The names may carry a dataset prefix (`thumos_train_v`) and come either as one array per file (named
    after the file, e.g. `train_v.pkl`) or as dict keys inside a pickle. `*_v` holds videos as `(N, K, D)`
    proposal bags (APIVR/THUMOS14: 64 x 4096) or `(N, D)` vectors, `*_i` images `(N, Di)`, `*_label` class ids
    `(N,)` (or one-hot `(N, C)`); row n of the three arrays belongs together. Pickles are read with
    `NumpyOnlyUnpickler`: numpy arrays only.

    Args:
        folder_or_files: a folder (its `*.pkl` / `*.pickle` / `*.p` files) or a list of pickle files.
        num_labels: labels must be in `[0, num_labels)`; default `1 + the largest training label`.
        on_bad_rows: `"raise"` or `"skip"` rows with NaN/inf features or labels out of range (shape
            mismatches between whole arrays always raise).

    Returns:
        `datasets.DatasetDict` with one split per prefix ("train", "test", "validation", ...) and columns
        `image_features`, `video_features`, `label`.
    """
    from datasets import Array2D, Dataset, DatasetDict, Features, List, Value

    _check_on_bad_rows(on_bad_rows)
    if isinstance(folder_or_files, (str, os.PathLike)) and os.path.isdir(folder_or_files):
        folder = os.fspath(folder_or_files)
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(_PICKLE_EXTENSIONS))
        if not files:
            raise ValueError(f"{folder}: no pickle files (*.pkl, *.pickle, *.p)")
    elif isinstance(folder_or_files, (str, os.PathLike)):
        files = [os.fspath(folder_or_files)]
    else:
        files = [os.fspath(f) for f in folder_or_files]
    arrays: dict[str, dict[str, tuple[Any, str]]] = {}
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such APIVR feature file: {path}")
        for name, value in _named_arrays(path).items():
            match = _APIVR_NAME.match(name)
            if match is None:
                logger.warning("%s: ignoring array %r (not named *_v, *_i or *_label)", path, name)
                continue
            kind = {"labels": "label"}.get(match["kind"].lower(), match["kind"].lower())
            split = _split_of(match["prefix"])
            if kind in arrays.setdefault(split, {}):
                raise ValueError(f"{path}: array {name!r} gives a second {kind!r} array for split {split!r}")
            arrays[split][kind] = (value, f"{path}:{name}")
    if not arrays:
        raise ValueError(f"no arrays named *_v, *_i, *_label in {files}")
    for split, parts in arrays.items():
        missing = [k for k in ("v", "i", "label") if k not in parts]
        if missing:
            raise ValueError(f"split {split!r}: missing the {', '.join('*_' + m for m in missing)} array(s) (found {sorted(parts)})")

    prepared = {}
    for split, parts in arrays.items():
        video = _numeric_array(parts["v"][0], parts["v"][1], (2, 3))
        image = _numeric_array(parts["i"][0], parts["i"][1], (2,))
        labels = _as_labels(parts["label"][0], parts["label"][1])
        counts = {parts["v"][1]: len(video), parts["i"][1]: len(image), parts["label"][1]: len(labels)}
        if len(set(counts.values())) != 1:
            raise ValueError(f"split {split!r}: videos, images and labels must have the same number of rows, got {counts}")
        if video.ndim == 3 and video.shape[1] == 0:
            raise ValueError(f"{parts['v'][1]}: empty proposal bags (shape {video.shape})")
        prepared[split] = (video, image, labels, parts)
    if num_labels is None:
        reference = prepared.get("train", next(iter(prepared.values())))[2]
        num_labels = int(reference.max()) + 1 if len(reference) else None

    out = {}
    for split, (video, image, labels, parts) in prepared.items():
        # Whole-array checks first (fast); rows are only visited to name the bad ones.
        finite_v = np.isfinite(video.reshape(len(video), -1)).all(1)
        finite_i = np.isfinite(image).all(1)
        in_range = (labels >= 0) & (labels < (num_labels if num_labels is not None else np.iinfo(np.int64).max))
        bad_rows = np.flatnonzero(~(finite_v & finite_i & in_range))
        messages = []
        for row in bad_rows:
            if not finite_i[row]:
                messages.append((row, f"{split}: row {row}, column 'image_features' ({parts['i'][1]}): contains NaN or inf"))
            elif not finite_v[row]:
                messages.append((row, f"{split}: row {row}, column 'video_features' ({parts['v'][1]}): contains NaN or inf"))
            else:
                messages.append((row, f"{split}: row {row}, column 'label' ({parts['label'][1]}): class id {labels[row]} is out of range [0, {num_labels})"))
        if messages and on_bad_rows == "raise":
            raise ValueError(messages[0][1] + (f" (and {len(messages) - 1} more bad row(s))" if len(messages) > 1 else ""))
        if messages:
            _report_skipped(split, messages)
            keep = np.setdiff1d(np.arange(len(labels)), bad_rows)
            video, image, labels = video[keep], image[keep], labels[keep]
        video_feature = Array2D(shape=video.shape[1:], dtype="float32") if video.ndim == 3 else List(Value("float32"), length=video.shape[1])
        features = Features(
            {
                IMAGE_FEATURES: List(Value("float32"), length=image.shape[1]),
                VIDEO_FEATURES: video_feature,
                LABEL: Value("int64"),
            }
        )
        out[split] = Dataset.from_dict(
            {IMAGE_FEATURES: image.astype(np.float32), VIDEO_FEATURES: video.astype(np.float32), LABEL: labels},
            features=features,
        )
    return DatasetDict(out)


# ----------------------------------------------------------------------------------------------------------
# Dataset -> arrays
# ----------------------------------------------------------------------------------------------------------


def activity_arrays(dataset, rows: Iterable[int] | None = None) -> dict[str, np.ndarray | None]:
    """Activity rows as stacked numpy arrays, bags padded to the longest.

    Returns:
        dict with `image_features` `(N, Di)`, `video_features` `(N, D)` or `(N, K, D)`, `proposal_scores`
        `(N, K)` (or None), `proposal_mask` `(N, K)` bool (None for vectors; all True when the bags need no
        padding and the dataset has no `proposal_mask` column), `labels` `(N,)` int64.
    """
    wanted = [c for c in (IMAGE_FEATURES, VIDEO_FEATURES, PROPOSAL_SCORES, "proposal_mask", LABEL) if c in dataset.column_names]
    view = dataset.select_columns(wanted)
    if rows is not None:
        view = view.select(list(rows))
    view = view.with_format("numpy")[:]  # dict of numpy arrays (object arrays for ragged columns)
    column_names = list(view)
    image = view[IMAGE_FEATURES]
    image = np.stack(list(image)).astype(np.float32) if image.dtype == object else image.astype(np.float32)
    video_column = view[VIDEO_FEATURES]
    labels = np.asarray(view[LABEL], dtype=np.int64)
    scores = mask = None
    if isinstance(video_column, np.ndarray) and video_column.dtype != object:
        video = video_column.astype(np.float32)
        if video.ndim == 3:
            mask = np.ones(video.shape[:2], dtype=bool)
            if "proposal_mask" in column_names:
                mask = np.asarray(view["proposal_mask"], dtype=bool).reshape(video.shape[:2])
            if PROPOSAL_SCORES in column_names:
                scores = np.asarray(view[PROPOSAL_SCORES], dtype=np.float32)
    else:  # ragged bags: pad with zeros and mask the padding
        bags = [np.asarray(b, dtype=np.float32) for b in video_column]
        if bags and bags[0].ndim == 1:
            video = np.stack(bags)
        else:
            longest = max((b.shape[0] for b in bags), default=0)
            dim = bags[0].shape[-1] if bags else 0
            video = np.zeros((len(bags), longest, dim), dtype=np.float32)
            mask = np.zeros((len(bags), longest), dtype=bool)
            for i, bag in enumerate(bags):
                video[i, : len(bag)], mask[i, : len(bag)] = bag, True
            if PROPOSAL_SCORES in column_names:
                scores = np.zeros((len(bags), longest), dtype=np.float32)
                for i, s in enumerate(view[PROPOSAL_SCORES]):
                    s = np.asarray(s, dtype=np.float32)
                    scores[i, : len(s)] = s if s.ndim == 1 else s.max(-1)
    return {IMAGE_FEATURES: image, VIDEO_FEATURES: video, PROPOSAL_SCORES: scores, "proposal_mask": mask, "labels": labels}
