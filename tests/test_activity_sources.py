"""Real MAP-IVR feature sources: restricted unpickling, the APIVR layout, `datasets` loading and validation."""

import os
import pickle

import numpy as np
import pytest

from xmodal.data.activity_sources import (
    NumpyOnlyUnpickler,
    activity_arrays,
    load_activity_dataset,
    load_apivr_features,
    load_numpy_pickle,
    validate_activity_dataset,
)


def _write_pickle(path, obj, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


# ---- restricted unpickler ----


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_unpickler_accepts_numpy_arrays_in_containers(tmp_path, protocol):
    rng = np.random.default_rng(0)
    content = {
        "train_v": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "labels": np.array([0, 2, 1], dtype=np.int64),
        "nested": [np.arange(3, dtype=np.int32), (np.float64(1.5), np.int64(7))],
        "fortran": np.asfortranarray(rng.standard_normal((2, 3))),
    }
    loaded = load_numpy_pickle(_write_pickle(tmp_path / "a.pkl", content, protocol))
    assert set(loaded) == set(content)
    for key in ("train_v", "labels", "fortran"):
        assert loaded[key].dtype == content[key].dtype
        np.testing.assert_array_equal(loaded[key], content[key])
    np.testing.assert_array_equal(loaded["nested"][0], content["nested"][0])
    assert loaded["nested"][1] == (1.5, 7)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_rejects_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_pickle(tmp_path / "evil.pkl", {"train_v": _Exploit(marker)})
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os|nt)\.system") as info:
        load_numpy_pickle(path)
    assert "evil.pkl" in str(info.value)
    assert not marker.exists()
    # the loader refuses it too, before anything runs
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_apivr_features(path)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [pickle.loads, __import__("collections").OrderedDict(a=1), {1, 2}])
def test_unpickler_rejects_any_other_global(tmp_path, obj):
    path = _write_pickle(tmp_path / "x.pkl", obj, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        load_numpy_pickle(path)


def test_unpickler_find_class_allow_list():
    import io

    unpickler = NumpyOnlyUnpickler(io.BytesIO(b""), source="mem")
    assert unpickler.find_class("numpy", "ndarray") is np.ndarray
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is not None
    for module, name in [("builtins", "eval"), ("numpy", "load"), ("numpy.lib.format", "read_array"), ("subprocess", "Popen")]:
        with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
            unpickler.find_class(module, name)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = _write_pickle(tmp_path / "t.pkl", {"train_v": np.zeros((2, 3, 4))})
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_numpy_pickle(path)


# ---- APIVR layout ----


def _apivr_arrays(rng, prefix, n, k=3, d=6, di=4, num_classes=3):
    return {
        f"{prefix}_v": rng.standard_normal((n, k, d)).astype(np.float32),
        f"{prefix}_i": rng.standard_normal((n, di)).astype(np.float32),
        f"{prefix}_label": (np.arange(n) % num_classes).astype(np.int64),
    }


def test_load_apivr_features_from_one_dict_pickle(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {**_apivr_arrays(rng, "thumos_train", 6), **_apivr_arrays(rng, "thumos_test", 4)}
    _write_pickle(tmp_path / "features.pkl", arrays, protocol=2)
    data = load_apivr_features(tmp_path)
    assert sorted(data) == ["test", "train"]
    for split, prefix in (("train", "thumos_train"), ("test", "thumos_test")):
        rows = data[split].with_format("numpy")[:]
        np.testing.assert_array_equal(rows["video_features"], arrays[f"{prefix}_v"])
        np.testing.assert_array_equal(rows["image_features"], arrays[f"{prefix}_i"])
        np.testing.assert_array_equal(rows["label"], arrays[f"{prefix}_label"])
    assert data["train"].features["video_features"].shape == (3, 6)


def test_load_apivr_features_from_one_file_per_array_and_one_hot_labels(tmp_path):
    rng = np.random.default_rng(2)
    arrays = _apivr_arrays(rng, "train", 5)
    one_hot = np.eye(3, dtype=np.float32)[arrays["train_label"]]
    files = [
        _write_pickle(tmp_path / "train_v.pkl", arrays["train_v"]),
        _write_pickle(tmp_path / "train_i.pkl", arrays["train_i"]),
        _write_pickle(tmp_path / "train_label.pkl", one_hot),
    ]
    data = load_apivr_features(files)
    rows = data["train"].with_format("numpy")[:]
    np.testing.assert_array_equal(rows["label"], arrays["train_label"])
    np.testing.assert_array_equal(rows["video_features"], arrays["train_v"])


def test_apivr_nan_row_is_named_or_skipped(tmp_path, caplog):
    rng = np.random.default_rng(3)
    arrays = _apivr_arrays(rng, "train", 6)
    arrays["train_v"][4, 1, 2] = np.nan
    arrays["train_i"][1, 0] = np.inf
    path = _write_pickle(tmp_path / "f.pkl", arrays)
    with pytest.raises(ValueError, match=r"train: row 1, column 'image_features'.*NaN or inf.*\(and 1 more bad row"):
        load_apivr_features(path)
    with caplog.at_level("WARNING"):
        data = load_apivr_features(path, on_bad_rows="skip")
    assert len(data["train"]) == 4
    assert "skipped 2 bad row(s)" in caplog.text and "row 4, column 'video_features'" in caplog.text
    np.testing.assert_array_equal(data["train"].with_format("numpy")[:]["label"], arrays["train_label"][[0, 2, 3, 5]])


def test_apivr_test_label_out_of_training_range(tmp_path):
    rng = np.random.default_rng(4)
    arrays = {**_apivr_arrays(rng, "train", 6), **_apivr_arrays(rng, "test", 3)}
    arrays["test_label"][2] = 3  # training labels are 0..2
    path = _write_pickle(tmp_path / "f.pkl", arrays)
    with pytest.raises(ValueError, match=r"test: row 2, column 'label'.*class id 3 is out of range \[0, 3\)"):
        load_apivr_features(path)
    assert len(load_apivr_features(path, num_labels=4)["test"]) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(train_i=a["train_i"][:4]), "same number of rows"),
        (lambda a: a.pop("train_i"), r"missing the \*_i array"),
        (lambda a: a.update(train_v=a["train_v"][:, :0]), "empty proposal bags"),
        (lambda a: a.update(train_v=a["train_v"][..., None]), "expected 2-D or 3-D array"),
        (lambda a: a.update(train_v=a["train_v"].astype(object)), "numeric array"),
        (lambda a: a.update(train_label=a["train_label"] + 0.5), "integer class ids"),
    ],
)
def test_apivr_structural_errors(tmp_path, change, message):
    arrays = _apivr_arrays(np.random.default_rng(5), "train", 6)
    change(arrays)
    path = _write_pickle(tmp_path / "f.pkl", arrays)
    with pytest.raises(ValueError, match=message):
        load_apivr_features(path)


# ---- any `datasets` dataset ----


def _parquet(tmp_path, name, rows):
    from datasets import Dataset

    path = str(tmp_path / f"{name}.parquet")
    Dataset.from_list(rows).to_parquet(path)
    return path


# The role of each column `_rows` writes, as `load_activity_dataset` arguments.
_ROW_COLUMNS = dict(image_features_column="img", video_features_column="vid", proposal_scores_column="conf", label_column="y")


def _rows(n, rng, k=3, d=5, di=4, num_classes=3):
    return [
        {
            "img": rng.standard_normal(di).astype(np.float32).tolist(),
            "vid": rng.standard_normal((k, d)).astype(np.float32).tolist(),
            "conf": rng.random(k).astype(np.float32).tolist(),
            "y": int(i % num_classes),
        }
        for i in range(n)
    ]


def test_load_activity_dataset_renames_columns(tmp_path):
    rng = np.random.default_rng(6)
    train, test = _rows(6, rng), _rows(3, rng)
    data = load_activity_dataset(
        train_file=_parquet(tmp_path, "train", train), validation_file=_parquet(tmp_path, "val", test), **_ROW_COLUMNS
    )
    assert sorted(data) == ["train", "validation"]
    assert set(data["train"].column_names) == {"image_features", "video_features", "proposal_scores", "label"}
    arrays = activity_arrays(data["train"])
    np.testing.assert_array_equal(arrays["video_features"], np.array([r["vid"] for r in train], dtype=np.float32))
    np.testing.assert_array_equal(arrays["proposal_scores"], np.array([r["conf"] for r in train], dtype=np.float32))
    assert arrays["proposal_mask"].all() and arrays["labels"].tolist() == [0, 1, 2, 0, 1, 2]


def test_load_activity_dataset_from_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(7)
    rows = _rows(4, rng)
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    data = load_activity_dataset(
        str(tmp_path / "saved"), image_features_column="img", video_features_column="vid", proposal_scores_column=None, label_column="y"
    )
    assert list(data) == ["test"] and "proposal_scores" not in data["test"].column_names and "conf" in data["test"].column_names


def test_missing_column_is_named(tmp_path):
    path = _parquet(tmp_path, "train", _rows(3, np.random.default_rng(8)))
    with pytest.raises(ValueError, match=r"train: missing column\(s\) \['image_features'\]"):
        load_activity_dataset(train_file=path, video_features_column="vid", label_column="y")
    with pytest.raises(ValueError, match="missing column 'scores'"):
        load_activity_dataset(train_file=path, image_features_column="img", video_features_column="vid", label_column="y", proposal_scores_column="scores")


@pytest.mark.parametrize(
    "row, corrupt, message",
    [
        (2, lambda r: r["vid"][1].__setitem__(0, float("nan")), r"train: row 2, column 'vid': contains NaN or inf"),
        (1, lambda r: r["img"].__setitem__(3, float("inf")), r"train: row 1, column 'img': contains NaN or inf"),
        (3, lambda r: r.update(img=r["img"][:3]), r"train: row 3, column 'img': expected 4 values, got 3"),
        (4, lambda r: r.update(vid=[v[:4] for v in r["vid"]]), r"train: row 4, column 'vid': expected feature size 5, got 4"),
        (2, lambda r: r.update(vid=[], conf=[]), r"train: row 2, column 'vid': empty proposal bag"),
        (5, lambda r: r.update(conf=r["conf"][:2]), r"train: row 5, column 'conf': expected one score"),
        (1, lambda r: r.update(y=-1), r"train: row 1, column 'y': class id -1 is out of range"),
    ],
)
def test_bad_rows_are_named_or_skipped(tmp_path, caplog, row, corrupt, message):
    rows = _rows(6, np.random.default_rng(9))
    corrupt(rows[row])
    path = _parquet(tmp_path, "train", rows)
    kwargs = dict(train_file=path, num_labels=3, **_ROW_COLUMNS)
    with pytest.raises(ValueError, match=message):
        load_activity_dataset(**kwargs)
    with caplog.at_level("WARNING"):
        data = load_activity_dataset(**kwargs, on_bad_rows="skip")
    assert len(data["train"]) == 5
    assert "skipped 1 bad row(s)" in caplog.text


def test_label_out_of_range_in_validation_split(tmp_path):
    rng = np.random.default_rng(10)
    train, val = _rows(6, rng), _rows(2, rng)
    val[1]["y"] = 3
    with pytest.raises(ValueError, match=r"validation: row 1, column 'y': class id 3 is out of range \[0, 3\)"):
        load_activity_dataset(
            train_file=_parquet(tmp_path, "train", train), validation_file=_parquet(tmp_path, "val", val), **_ROW_COLUMNS
        )


def test_validate_and_arrays_with_ragged_bags():
    from datasets import Dataset

    rng = np.random.default_rng(11)
    rows = [
        {"image_features": rng.standard_normal(4).tolist(), "video_features": rng.standard_normal((k, 5)).tolist(), "label": i % 2}
        for i, k in enumerate([3, 1, 2])
    ]
    dataset, skipped = validate_activity_dataset(Dataset.from_list(rows), num_labels=2)
    assert skipped == []
    arrays = activity_arrays(dataset)
    assert arrays["video_features"].shape == (3, 3, 5)
    np.testing.assert_array_equal(arrays["proposal_mask"], [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(arrays["video_features"][1, 0], np.asarray(rows[1]["video_features"][0], dtype=np.float32))
    assert (arrays["video_features"][1, 1:] == 0).all()
    with pytest.raises(ValueError, match="on_bad_rows"):
        validate_activity_dataset(dataset, on_bad_rows="ignore")
