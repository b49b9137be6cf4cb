"""Probability stores: round trip, quantisation, atomic finalize, and the errors on broken stores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segfold.errors import DataError
from segfold.probs import ProbStore, store_exists, store_paths


def test_round_trip_quantises_to_uint8(tmp_path):
    store = ProbStore.create(tmp_path, "oof", ["a", "b", "c"], ["x", "y"], height=2, width=3)
    probs = np.zeros((3, 2, 2, 3), dtype=np.float32)
    probs[0, 0, 0, 0] = 0.5  # 0.5 * 255 = 127.5 -> rint (half to even) -> 128 -> 128 / 255
    probs[1, 1, 1, 2] = 1.0  # 255
    probs[2, 0, 1, 1] = 0.1  # 25.5 -> 26 (rint: half to even) -> 26 / 255
    probs[2, 1, 0, 0] = 1.7  # clipped to 1
    store.write([0, 1], probs[:2])
    store.write(2, probs[2])
    opened = store.finalize()
    assert opened.image_ids == ["a", "b", "c"]
    assert opened.classes == ["x", "y"]
    assert opened.shape == (3, 2, 2, 3)
    assert opened.probs.dtype == np.uint8
    assert opened.probs[0, 0, 0, 0] == 128
    assert opened.probs[1, 1, 1, 2] == 255
    assert opened.probs[2, 0, 1, 1] == 26
    assert opened.probs[2, 1, 0, 0] == 255
    back = ProbStore.open(tmp_path, "oof").read([2])
    assert back.dtype == np.float32 and back.shape == (1, 2, 2, 3)
    assert back[0, 0, 1, 1] == pytest.approx(26 / 255)
    assert ProbStore.open(tmp_path, "oof").read(0).shape == (2, 2, 3)
    assert np.abs(opened.read(slice(None)) - np.clip(probs, 0, 1)).max() <= 0.5 / 255 + 1e-7
    assert opened.row_of("c") == 2
    with pytest.raises(DataError, match="no ImageId 'z'"):
        opened.row_of("z")
    # the header says what is inside, byte count matches N*C*H*W = 3*2*2*3 = 36
    meta = json.loads((tmp_path / "oof.json").read_text())
    assert meta["shape"] == [3, 2, 2, 3] and meta["classes"] == ["x", "y"] and meta["has_cls"] is False
    # the array file describes itself: a .npy header with the shape and dtype, then N*C*H*W = 36 bytes
    with open(tmp_path / "oof.npy", "rb") as handle:
        version = np.lib.format.read_magic(handle)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle) if version == (1, 0) \
            else np.lib.format.read_array_header_2_0(handle)
        assert (shape, fortran, dtype) == ((3, 2, 2, 3), False, np.dtype(np.uint8))
        assert len(handle.read()) == 36
    assert (tmp_path / "oof.index.csv").read_text().splitlines() == ["ImageId", "a", "b", "c"]


def test_aux_class_probabilities(tmp_path):
    store = ProbStore.create(tmp_path, "test", ["001", "002"], ["1"], height=1, width=1)
    store.write([0, 1], np.full((2, 1, 1, 1), 0.25))
    store.write_cls([1, 0], np.array([[0.9], [0.2]]))
    opened = store.finalize()
    np.testing.assert_allclose(opened.cls, [[0.2], [0.9]])
    # ids that look numeric stay strings
    assert ProbStore.open(tmp_path, "test").image_ids == ["001", "002"]


def test_nothing_final_until_finalize(tmp_path):
    store = ProbStore.create(tmp_path, "oof", ["a"], ["x"], height=4, width=4)
    store.write(0, np.ones((1, 4, 4)))
    assert not store_exists(tmp_path, "oof")
    assert not any(path.exists() for path in store_paths(tmp_path, "oof").values())
    with pytest.raises(DataError, match="partial one exists"):
        ProbStore.open(tmp_path, "oof")
    store.finalize()
    assert store_exists(tmp_path, "oof")
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_rewrite_replaces_old_store_only_on_finalize(tmp_path):
    first = ProbStore.create(tmp_path, "oof", ["a"], ["x"], height=1, width=2)
    first.write(0, np.zeros((1, 1, 2)))
    first.finalize()
    second = ProbStore.create(tmp_path, "oof", ["a", "b"], ["x"], height=1, width=2)
    second.write([0, 1], np.ones((2, 1, 1, 2)))
    assert ProbStore.open(tmp_path, "oof").shape == (1, 1, 1, 2)  # old one still readable
    second.abort()
    assert ProbStore.open(tmp_path, "oof").read(0).max() == 0.0
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_unwritten_rows_and_bad_shapes_are_errors(tmp_path):
    store = ProbStore.create(tmp_path, "oof", ["a", "b"], ["x"], height=2, width=2)
    with pytest.raises(ValueError, match=r"expected \(1, 1, 2, 2\)"):
        store.write([0], np.zeros((1, 1, 3, 3)))
    store.write([0], np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="1 rows were never written"):
        store.finalize()
    assert store.finalize(allow_missing=True).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="read-only"):
        ProbStore.open(tmp_path, "oof").write(0, np.zeros((1, 2, 2)))
    with pytest.raises(DataError, match="more than once"):
        ProbStore.create(tmp_path, "dup", ["a", "a"], ["x"], height=1, width=1)


def test_truncated_store_is_reported(tmp_path):
    store = ProbStore.create(tmp_path, "oof", ["a", "b"], ["x"], height=2, width=2)
    store.write([0, 1], np.zeros((2, 1, 2, 2)))
    store.finalize()
    (tmp_path / "oof.npy").write_bytes((tmp_path / "oof.npy").read_bytes()[:-3])
    with pytest.raises(DataError, match="oof.npy: not a readable .npy array"):
        ProbStore.open(tmp_path, "oof")


def test_old_raw_stores_still_open(tmp_path):
    """A store from before the .npy format: a raw `<name>.u8` file whose shape only the JSON gives."""
    values = np.arange(2 * 1 * 2 * 3, dtype=np.uint8).reshape(2, 1, 2, 3)
    (tmp_path / "oof.u8").write_bytes(values.tobytes())
    (tmp_path / "oof.index.csv").write_text("ImageId\na\nb\n")
    (tmp_path / "oof.json").write_text(json.dumps({"classes": ["x"], "shape": [2, 1, 2, 3], "dtype": "uint8",
                                                   "scale": 255, "has_cls": False}))
    old = ProbStore.open(tmp_path, "oof")
    assert old.shape == (2, 1, 2, 3) and old.image_ids == ["a", "b"]
    np.testing.assert_array_equal(old.probs, values)
    assert old.read(1)[0, 1, 2] == pytest.approx(11 / 255)
    (tmp_path / "oof.u8").write_bytes(b"\0" * 5)
    with pytest.raises(DataError, match="5 bytes, expected 12"):
        ProbStore.open(tmp_path, "oof")
    # rewriting the store replaces the old raw file by the .npy one
    new = ProbStore.create(tmp_path, "oof", ["a"], ["x"], height=1, width=1)
    new.write(0, np.ones((1, 1, 1)))
    assert new.finalize().probs[0, 0, 0, 0] == 255
    assert not (tmp_path / "oof.u8").exists() and (tmp_path / "oof.npy").is_file()


def _oof_experiment(tmp_path):
    """Six 4x4 training images in 3 folds; folds 0 and 2 have OOF stores, fold 1 has none."""
    import cv2
    import yaml

    from segfold.config import validate_config

    root = tmp_path / "data"
    (root / "train_images").mkdir(parents=True)
    for name in "abcdef":
        cv2.imwrite(str(root / "train_images" / f"{name}.png"), np.full((4, 4, 3), 40 * "abcdef".index(name), np.uint8))
    # a/1: the top row, column-major pixels 1, 5, 9, 13; c/2: (row 3, col 0) and (row 3, col 1) = pixels 4 and 8
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.png,1,1 1 5 1 9 1 13 1\nc.png,2,4 1 8 1\n")
    raw = {"experiment": {"name": "oofexp", "output_root": str(tmp_path / "out")},
           "data": {"root": str(root), "classes": ["1", "2"], "folds": {"n_folds": 3, "method": "kfold"}},
           "model": {"arch": "Unet", "encoder_name": "test_resnet"}}
    cfg = validate_config(raw)
    out = cfg.experiment.output_dir
    out.mkdir(parents=True)
    (out / "folds.csv").write_text("ImageId,fold\nd.png,2\na.png,0\ne.png,1\nc.png,2\nb.png,0\nf.png,1\n")
    fold0 = ProbStore.create(out / "fold0", "oof", ["b.png", "a.png"], ["1", "2"], 4, 4)
    probs = np.zeros((2, 2, 4, 4), dtype=np.float32)
    probs[1, 0, 0, :] = 0.9  # a/1: the top row ...
    probs[1, 0, 1, 0] = 0.8  # ... and one more pixel: Dice 2 * 4 / (4 + 5) = 8/9
    fold0.write([0, 1], probs)
    fold0.write_cls([0, 1], np.array([[0.1, 0.2], [0.9, 0.3]]))
    fold0.finalize()
    fold2 = ProbStore.create(out / "fold2", "oof", ["c.png", "d.png"], ["1", "2"], 4, 4)
    probs = np.zeros((2, 2, 4, 4), dtype=np.float32)
    probs[0, 1] = 0.4  # c/2 below 0.5: predicted empty against 2 true pixels, Dice 0
    probs[1, 0, 2, 2] = 0.6  # d/1: one pixel against an empty truth, Dice 0
    fold2.write([0, 1], probs)
    fold2.write_cls([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]]))
    fold2.finalize()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return cfg, path


def test_oof_gathers_existing_folds_and_scores(tmp_path, repo_root, capsys):
    from test_submission import _load_script

    cfg, path = _oof_experiment(tmp_path)
    result = _load_script(repo_root, "oof").main(["--config", str(path)])
    oof = ProbStore.open(cfg.experiment.output_dir / "oof", "oof")
    assert oof.image_ids == ["d.png", "a.png", "c.png", "b.png"]  # folds.csv order, fold 1 left out
    assert oof.probs[1, 0, 0, 0] == 230  # round(0.9 * 255) = round(229.5) = 230 (half to even), copied as is
    np.testing.assert_allclose(oof.cls[1], [0.9, 0.3])
    # pairs (class 1, class 2): a (8/9, 1), b (1, 1), c (1, 0), d (0, 1) -> mean (5 + 8/9) / 8 = 53/72
    assert result["score"] == pytest.approx(53 / 72)
    assert result["class_dice"] == pytest.approx({"1": (8 / 9 + 1 + 1 + 0) / 4, "2": 3 / 4})
    assert (result["folds"], result["missing_folds"]) == ([0, 2], [1])
    printed = capsys.readouterr().out
    assert "missing folds: [1]" in printed and "OOF dice_pairs = 0.73611" in printed
    scores = pd.read_csv(cfg.experiment.output_dir / "oof" / "oof_scores.csv", dtype={"ImageId": str})
    assert scores.set_index("ImageId")["score"].to_dict() == pytest.approx(
        {"d.png": 0.5, "a.png": 17 / 18, "c.png": 0.5, "b.png": 1.0})

    # the worst image is d (0.5, first in the file), the best b (1.0)
    written = _load_script(repo_root, "visualize").main(["--config", str(path), "--count", "1"])
    assert [p.name for p in written] == ["worst_01_d.png", "best_01_b.png"]
    for png in written:
        import cv2

        picture = cv2.imread(str(png))
        assert picture is not None and picture.shape[0] > 50 and picture.std() > 0


def test_oof_without_any_fold_is_an_error(tmp_path, repo_root, capsys):
    from test_submission import _load_script

    cfg, path = _oof_experiment(tmp_path)
    import shutil

    for k in (0, 2):
        shutil.rmtree(cfg.experiment.output_dir / f"fold{k}")
    with pytest.raises(SystemExit):
        _load_script(repo_root, "oof").main(["--config", str(path)])
    assert "no fold of" in capsys.readouterr().err
