"""Folds: sizes, balance, determinism, groups that never leak, folds.csv and the script."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from segfold.config import validate_config
from segfold.data import folds
from segfold.data.formats import Annotations
from segfold.errors import DataError


def make_config(tmp_path, **fold_options):
    return validate_config({"experiment": {"output_root": str(tmp_path / "out"), "name": "exp", "seed": 7},
                            "data": {"root": str(tmp_path / "data"), "classes": ["a", "b", "c"],
                                     "folds": fold_options}})


def make_annotations(cfg, n=60, seed=0, metadata=None):
    """Synthetic labels: image i of sequence `seq{i % 6}`; class presence drawn at random."""
    rng = np.random.default_rng(seed)
    ids = [f"seq{i % 6}_{i:03d}.jpg" for i in range(n)]
    areas = (rng.random((n, 3)) < [0.5, 0.3, 0.1]) * rng.integers(1, 500, (n, 3))
    meta = pd.DataFrame(metadata if metadata is not None else {}, index=pd.Index(ids, name="image"))
    return Annotations(cfg.data, "train", ids, np.full((n, 2), [20, 30]), areas, metadata=meta)


def test_kfold_sizes_and_determinism(tmp_path):
    cfg = make_config(tmp_path, method="kfold", n_folds=4)
    ann = make_annotations(cfg)
    a, b = folds.make_folds(cfg, ann), folds.make_folds(cfg, ann)
    assert list(a.columns) == ["ImageId", "fold"] and a["ImageId"].tolist() == ann.image_ids
    assert a["fold"].value_counts().sort_index().tolist() == [15, 15, 15, 15]  # 60 / 4
    pd.testing.assert_frame_equal(a, b)
    other = folds.make_folds(make_config(tmp_path, method="kfold", n_folds=4, seed=8), ann)
    assert not np.array_equal(other["fold"], a["fold"])


def test_stratified_on_class_sets_balances_every_set(tmp_path):
    cfg = make_config(tmp_path, method="stratified", n_folds=3)
    ann = make_annotations(cfg, n=90)
    labels = folds.stratification_labels(cfg.data.folds, ann)
    fold = folds.make_folds(cfg, ann)["fold"].to_numpy()
    for label in np.unique(labels):
        counts = np.bincount(fold[labels == label], minlength=3)
        assert counts.max() - counts.min() <= 1, (label, counts)  # StratifiedKFold splits each set evenly


def test_rare_class_sets_are_merged():
    labels = folds._merge_rare(np.array(["00"] * 6 + ["01"] * 5 + ["11"] * 2 + ["10"] * 1), 5)
    # "11" (2) and "10" (1) have fewer than 5 members: together "rare" (3), still < 5 -> the largest set "00"
    assert labels.tolist() == ["00"] * 6 + ["01"] * 5 + ["00"] * 3


def test_area_bins(tmp_path):
    cfg = make_config(tmp_path, method="stratified", stratify_on="area", area_bins=2, n_folds=2)
    ann = make_annotations(cfg, n=8)
    ann.areas = np.array([[0, 0, 0], [0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0], [0, 40, 0], [50, 0, 0],
                          [60, 0, 0]])
    # empty -> bin 0; non-empty fractions split at their median (35 / 600): 10, 20, 30 -> 1; 40, 50, 60 -> 2
    assert folds.stratification_labels(cfg.data.folds, ann).tolist() == ["0", "0", "1", "1", "1", "2", "2", "2"]


def test_multilabel_balances_each_class(tmp_path):
    cfg = make_config(tmp_path, method="multilabel", n_folds=5)
    ann = make_annotations(cfg, n=200)
    fold = folds.make_folds(cfg, ann)["fold"].to_numpy()
    for c in range(3):
        counts = np.bincount(fold[ann.presence[:, c]], minlength=5)
        assert counts.max() - counts.min() <= 2, (c, counts)


def test_multilabel_with_one_class_stratifies_on_it(tmp_path):
    cfg = validate_config({"data": {"classes": ["pneumothorax"], "mode": "binary"}})
    presence = np.arange(50) % 5 == 0  # 10 positives among 50
    ann = Annotations(cfg.data, "train", [f"{i}" for i in range(50)], np.full((50, 2), 8), presence[:, None] * 3)
    fold = folds.make_folds(cfg, ann)["fold"].to_numpy()
    assert np.bincount(fold[presence], minlength=5).tolist() == [2, 2, 2, 2, 2]  # 10 positives over 5 folds


@pytest.mark.parametrize("method", ["group", "stratified_group"])
def test_groups_from_a_regex_never_leak(tmp_path, method):
    cfg = make_config(tmp_path, method=method, n_folds=3, group_regex="^([^_]+)_")
    ann = make_annotations(cfg)
    frame = folds.make_folds(cfg, ann)
    groups = frame["ImageId"].str.split("_").str[0]
    assert (frame.groupby(groups)["fold"].nunique() == 1).all()
    assert sorted(frame["fold"].unique()) == [0, 1, 2]
    pd.testing.assert_frame_equal(frame, folds.make_folds(cfg, ann))


def test_groups_from_a_column(tmp_path):
    cfg = make_config(tmp_path, method="group", n_folds=2, group_column="patient")
    patients = [f"p{i // 4}" for i in range(24)]  # 6 patients of 4 images
    ann = make_annotations(cfg, n=24, metadata={"patient": patients})
    frame = folds.make_folds(cfg, ann)
    assert (frame.groupby(np.array(patients))["fold"].nunique() == 1).all()
    with pytest.raises(DataError, match=r"group_column 'visit' is not a column"):
        folds.make_folds(make_config(tmp_path, method="group", n_folds=2, group_column="visit"), ann)


def test_group_errors(tmp_path):
    ann_cfg = make_config(tmp_path, method="group", n_folds=7, group_regex="^([^_]+)_")
    with pytest.raises(DataError, match=r"only 6 group\(s\) .* for 7 folds: set data.folds.n_folds <= 6"):
        folds.make_folds(ann_cfg, make_annotations(ann_cfg))
    cfg = make_config(tmp_path, method="group", n_folds=2, group_regex="^frame")
    with pytest.raises(DataError, match=r"does not match 60 ImageId\(s\): seq0_000.jpg"):
        folds.make_folds(cfg, make_annotations(cfg))


def test_write_load_and_stale_files(tmp_path):
    cfg = make_config(tmp_path, method="kfold", n_folds=3)
    ann = make_annotations(cfg, n=12)
    path = folds.write_folds(cfg, folds.make_folds(cfg, ann))
    assert path == tmp_path / "out" / "exp" / "folds.csv"
    loaded = folds.load_folds(cfg)
    assert loaded["fold"].tolist() == folds.make_folds(cfg, ann)["fold"].tolist()
    with pytest.raises(DataError, match=r"has folds \[0, 1, 2\] but data.folds.n_folds is 4"):
        folds.load_folds(make_config(tmp_path, method="kfold", n_folds=4))
    elsewhere = make_config(tmp_path, method="kfold", n_folds=3, path=str(tmp_path / "f.csv"))
    with pytest.raises(DataError, match="folds file not found"):
        folds.load_folds(elsewhere, create=False)
    table = folds.fold_table(loaded, ann)
    assert table["images"].tolist() == [4, 4, 4]
    assert table["class a"].sum() == ann.presence[:, 0].sum()


def test_make_folds_script(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "train_images").mkdir(parents=True)
    for i in range(8):
        cv2.imwrite(str(data / "train_images" / f"s{i % 4}_{i}.png"), np.zeros((4, 5, 3), np.uint8))
    (data / "train.csv").write_text("ImageId,ClassId,EncodedPixels\ns0_0.png,a,1 3\ns1_1.png,b,17 4\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"experiment:\n  output_root: {tmp_path / 'out'}\n  name: exp\n"
                      f"data:\n  root: {data}\n  classes: [a, b]\n  folds:\n    method: group\n"
                      "    group_regex: '^([^_]+)_'\n")
    monkeypatch.setattr(sys, "argv", ["make_folds.py", "--config", str(config), "--set", "data.folds.n_folds=2"])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "make_folds.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "2 folds (group) of 8 images" in out and "class a" in out
    frame = pd.read_csv(tmp_path / "out" / "exp" / "folds.csv")
    assert len(frame) == 8 and (frame.groupby(frame["ImageId"].str[:2])["fold"].nunique() == 1).all()
