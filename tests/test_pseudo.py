"""Pseudo-labels in the competition layout: test store -> pseudo folder in `data.format` -> read back by `read_train`.

The expected masks are thresholded (or arg-maxed) by hand from the probabilities written to the store,
then enlarged to the images' native size with `np.repeat` (the store is at half the native size).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from segfold.config import validate_config
from segfold.data.formats import read_train
from segfold.data.pseudo import read_pseudo, write_pseudo
from segfold.data.writers import index_values
from segfold.errors import DataError, OutputError
from segfold.pseudo import make_pseudo_labels
from test_blend import write_store

NATIVE = (24, 40)  # (H, W) of the test images; the store holds 12 x 20
LOW, HIGH = 0.02, 0.97

CASES = {
    "severstal_csv_long": {"format": "csv_long", "classes": ["1", "2", "3", "4"]},
    "severstal_row_major": {"format": "csv_long", "classes": ["1", "2"], "rle_order": "C",
                            "image_column": "Image", "class_column": "Defect", "rle_column": "Pixels"},
    "clouds_csv_combined": {"format": "csv_combined", "combined_column": "Image_Label",
                            "classes": ["Fish", "Flower", "Gravel", "Sugar"]},
    "siim_csv_instances": {"format": "csv_instances", "mode": "binary", "classes": ["pneumothorax"],
                           "relative_rle": True, "train_csv": "train-rle.csv", "image_column": "ImageId"},
    "tgs_png_binary": {"format": "png_binary", "mode": "binary", "classes": ["salt"], "train_csv": None,
                       "image_suffix": ".png", "mask_pattern": "{stem}.png"},
    "png_binary_per_class": {"format": "png_binary", "classes": ["x", "y"], "train_csv": None,
                             "mask_pattern": "{class}/{stem}_mask.png"},
    "png_index_multilabel": {"format": "png_index", "classes": ["a", "b"], "train_csv": None,
                             "class_values": [0, [5, 6]]},
}
MULTICLASS = {
    "camvid_png_index": {"format": "png_index", "mode": "multiclass", "classes": ["bg", "road", "car"],
                         "train_csv": None, "class_values": [0, 1, [2, 3]], "ignore_label": 255},
    "csv_long_background": {"format": "csv_long", "mode": "multiclass", "classes": ["bg", "a", "b"],
                            "background": "bg"},
    "png_binary_background": {"format": "png_binary", "mode": "multiclass", "classes": ["bg", "a"],
                              "background": "bg", "train_csv": None, "mask_pattern": "{class}/{stem}.png"},
}


def _ids(data: dict) -> list[str]:
    return ["t0", "t1", "t2"] if data.get("image_suffix") else ["t0.jpg", "t1.jpg", "t2.jpg"]


def _experiment(tmp_path, data: dict, probs: np.ndarray, threshold: float = 0.5):
    """A test folder of three native-size images and the experiment's test store of `probs` (half size)."""
    root = tmp_path / "data"
    ids = _ids(data)
    (root / "test_images").mkdir(parents=True)
    for image_id in ids:
        cv2.imwrite(str(root / "test_images" / f"{image_id}{data.get('image_suffix', '')}"),
                    np.full((*NATIVE, 3), 90, np.uint8))
    cfg = validate_config({"experiment": {"name": "exp", "output_root": str(tmp_path / "out")},
                           "data": {**data, "root": str(root), "sample_submission": None, "test_labels": None,
                                    "pseudo": {"low": 0.1, "high": 0.9, "confident": 0.9}},
                           "postprocess": {"threshold": threshold}})
    write_store(tmp_path / "out" / "exp" / "test", "test", ids, probs, classes=data["classes"])
    return cfg, ids


def _probs(n_classes: int, seed: int) -> np.ndarray:
    """Confident probabilities for images 0 and 2, an unsure image 1; a few values near the threshold."""
    rng = np.random.default_rng(seed)
    probs = np.where(rng.random((3, n_classes, 12, 20)) < 0.3, HIGH, LOW).astype(np.float32)
    probs[1, :, :6] = 0.5  # half the pixels unsure: left out
    probs[0, 0, 0, :3] = [0.55, 0.45, 0.62]  # 3 unsure values of 240 * C: still confident
    return probs


def _native(masks: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(masks, 2, axis=-2), 2, axis=-1)  # nearest-neighbour doubling


def _reader(data: dict, folder: str):
    """A training config of the same classes whose own format is the default (csv_long) where it can be.

    (A multiclass csv_long config needs a background class; the CamVid-like data names none.)
    """
    keys = {k: data[k] for k in ("classes", "mode", "background") if k in data}
    if data.get("mode") == "multiclass" and "background" not in data:
        keys = dict(data)
    return validate_config({"data": {**keys, "pseudo": {"path": folder, "share": 0.25}}}).data


@pytest.mark.parametrize("name", sorted(CASES))
def test_pseudo_folder_in_each_format_reads_back_the_thresholded_masks(tmp_path, name):
    data = CASES[name]
    probs = _probs(len(data["classes"]), seed=len(name))
    if data["format"] == "png_index":
        probs[0, 1, 4:8, 5:9] = 0.99  # overlap with class a where it is on: the index map keeps b (0.99 > 0.97)
    cfg, ids = _experiment(tmp_path, data, probs, threshold=0.6)
    result = make_pseudo_labels(cfg)
    assert (result["kept"], result["format"]) == (2, data["format"])
    folder = tmp_path / "out" / "exp" / "pseudo"
    assert sorted(p.name for p in (folder / "train_images").iterdir()) == sorted(
        f"{i}{data.get('image_suffix', '')}" for i in (ids[0], ids[2]))

    expected = (probs > 0.6).astype(np.uint8)  # the config's threshold, by hand
    if data["format"] == "png_index":
        both = (expected[:, 0] == 1) & (expected[:, 1] == 1)
        b_wins = both & (probs[:, 1] > probs[:, 0])  # one class per pixel: the more probable, ties to a
        expected[:, 0][b_wins] = 0
        expected[:, 1][both & ~b_wins] = 0
        assert b_wins[0].any() and (both & ~b_wins)[0].any()
    pseudo_cfg, annotations = read_pseudo(_reader(data, str(folder)))
    assert pseudo_cfg.format == data["format"]
    assert sorted(annotations.image_ids) == sorted([ids[0], ids[2]])
    for row in (0, 2):
        mask = annotations.mask(ids[row])
        assert mask.shape == (len(data["classes"]), *NATIVE)
        np.testing.assert_array_equal(mask, _native(expected[row]))
    # the same folder through the format's own reader, as a competition root
    again = read_train(pseudo_cfg)
    np.testing.assert_array_equal(again.mask(ids[2]), _native(expected[2]))


def test_pseudo_files_are_the_competition_files(tmp_path):
    data = CASES["clouds_csv_combined"]
    probs = _probs(4, seed=1)
    cfg, ids = _experiment(tmp_path, data, probs)
    make_pseudo_labels(cfg)
    folder = tmp_path / "out" / "exp" / "pseudo"
    frame = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["Image_Label", "EncodedPixels"]  # one row per image and class
    assert frame["Image_Label"].tolist() == [f"{i}_{c}" for i in ("t0.jpg", "t2.jpg") for c in data["classes"]]
    info = json.loads((folder / "pseudo.json").read_text())
    assert info["layout"]["format"] == "csv_combined" and info["image_ids"] == ["t0.jpg", "t2.jpg"]

    siim = tmp_path / "siim"
    cfg, _ = _experiment(siim, CASES["siim_csv_instances"], np.full((3, 1, 12, 20), LOW, np.float32))
    make_pseudo_labels(cfg)
    frame = pd.read_csv(siim / "out" / "exp" / "pseudo" / "train-rle.csv", dtype=str, keep_default_na=False)
    assert frame.values.tolist() == [["t0.jpg", "-1"], ["t1.jpg", "-1"], ["t2.jpg", "-1"]]  # SIIM's empty mask

    values, none = index_values(validate_config({"data": CASES["png_index_multilabel"]}).data)
    assert (values, none) == ([0, 5], 1)  # 1: the smallest value that names no class


@pytest.mark.parametrize("name", sorted(MULTICLASS))
def test_multiclass_pseudo_labels_are_the_argmax_class(tmp_path, name):
    data = MULTICLASS[name]
    rng = np.random.default_rng(5)
    n_classes = len(data["classes"])
    winner = rng.integers(0, n_classes, size=(3, 12, 20))
    probs = np.full((3, n_classes, 12, 20), LOW / 2, np.float32)
    np.put_along_axis(probs, winner[:, None], 1 - LOW / 2 * (n_classes - 1), axis=1)
    probs[0, :, 0, 0] = 0.3  # a tie-free unsure pixel: the first class among the highest
    probs[0, n_classes - 1, 0, 0] = 0.4
    probs[1] = 1 / n_classes
    cfg, ids = _experiment(tmp_path, data, probs)
    assert make_pseudo_labels(cfg)["kept"] == 2
    pseudo_cfg, annotations = read_pseudo(_reader(data, str(tmp_path / "out" / "exp" / "pseudo")))
    expected = winner.copy()
    expected[0, 0, 0] = n_classes - 1  # 0.4 beats 0.3
    for row in (0, 2):
        np.testing.assert_array_equal(annotations.mask(ids[row]), _native(expected[row]).astype(np.uint8))
    if data["format"] == "png_index":  # class car written as its first value, 2
        index_map = cv2.imread(str(tmp_path / "out" / "exp" / "pseudo" / "train_masks" / "t0.png"),
                               cv2.IMREAD_UNCHANGED)
        assert set(np.unique(index_map).tolist()) <= {0, 1, 2}
        np.testing.assert_array_equal(index_map == 2, _native(expected[0]) == 2)


def test_rewriting_replaces_the_folder_and_refuses_a_foreign_one(tmp_path):
    data = CASES["tgs_png_binary"]
    probs = _probs(1, seed=3)
    cfg, ids = _experiment(tmp_path, data, probs)
    folder = tmp_path / "out" / "exp" / "pseudo"
    make_pseudo_labels(cfg)
    cfg.data.pseudo.confident = 0.4  # every image now: the half-unsure one joins, nothing stale stays
    assert make_pseudo_labels(cfg)["kept"] == 3
    assert sorted(p.name for p in (folder / "train_masks").iterdir()) == ["t0.png", "t1.png", "t2.png"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left

    foreign = tmp_path / "inputs"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="is not a pseudo folder"):
        make_pseudo_labels(cfg, foreign)
    assert (foreign / "keep.txt").is_file()

    (folder / "train_images" / "t1.png").unlink()
    with pytest.raises(DataError, match="differ from the 3 that pseudo.json lists"):
        read_pseudo(_reader(data, str(folder)))
    empty = write_pseudo(tmp_path / "none", cfg.data, [], {"rule": "by hand"})
    with pytest.raises(DataError, match="no test image was confident enough"):
        read_pseudo(_reader(data, str(empty)))
