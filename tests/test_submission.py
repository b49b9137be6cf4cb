"""Submissions: layouts read from the sample, RLE by hand, the validator's rejections, the whole script with --score."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pandas as pd
import pytest

from segfold.config import validate_config
from segfold.errors import DataError
from segfold.probs.store import ProbStore
from segfold.submit.submission import build_submission, detect_layout, validate_submission

# A 3x4 mask with pixels (row 0, col 1), (row 1, col 1), (row 2, col 3).
# Column-major, 1-indexed numbering: pixel = col * 3 + row + 1 -> 4, 5, 12 -> runs "4 2 12 1".
# Relative (SIIM): 0-indexed starts 3 (length 2, ends at 5) and 11 -> gaps 3 and 11 - 5 = 6 -> "3 2 6 1".
MASK = np.zeros((3, 4), dtype=np.uint8)
MASK[0, 1] = MASK[1, 1] = MASK[2, 3] = 1
ABSOLUTE, RELATIVE = "4 2 12 1", "3 2 6 1"


def _frame(header, rows):
    return pd.DataFrame(rows, columns=header, dtype=str)


def _masks_for(table):
    return lambda ids: np.stack([table[i] for i in ids])


def test_layouts_are_read_from_the_header():
    assert detect_layout(["ImageId", "ClassId", "EncodedPixels"]).kind == "columns"
    columns = detect_layout(["ClassId", "EncodedPixels", "ImageId"])
    assert (columns.kind, columns.id_column, columns.class_column) == ("columns", "ImageId", "ClassId")
    assert detect_layout(["ImageId_ClassId", "EncodedPixels"]).kind == "joined"
    assert detect_layout(["Image_Label", "EncodedPixels"]).kind == "joined"
    siim = detect_layout(["ImageId", "EncodedPixels"], encoded=["-1", "-1"])
    assert (siim.kind, siim.relative, siim.empty) == ("image", True, "-1")
    with pytest.raises(DataError, match="not a known layout"):
        detect_layout(["id", "rle"])


@pytest.mark.parametrize(
    ("header", "rows", "classes", "relative", "expected"),
    [
        (["ImageId", "ClassId", "EncodedPixels"], [["a.jpg", "1", ""], ["a.jpg", "2", ""], ["b.jpg", "1", ""],
                                                   ["b.jpg", "2", ""]], ["1", "2"], False,
         ["", ABSOLUTE, ABSOLUTE, ""]),
        (["ImageId", "EncodedPixels", "ClassId"], [["b.jpg", "", "1"], ["a.jpg", "", "2"]], ["1", "2"], False,
         [ABSOLUTE, ABSOLUTE]),
        (["ImageId_ClassId", "EncodedPixels"], [["b.jpg_2", ""], ["b.jpg_1", ""], ["a.jpg_1", ""], ["a.jpg_2", ""]],
         ["1", "2"], False, ["", ABSOLUTE, "", ABSOLUTE]),
        (["Image_Label", "EncodedPixels"], [["a.jpg_Fish", ""], ["a.jpg_Sugar", ""], ["b.jpg_Fish", ""],
                                           ["b.jpg_Sugar", ""]], ["Fish", "Sugar"], False,
         ["", ABSOLUTE, ABSOLUTE, ""]),
        (["ImageId", "EncodedPixels"], [["b", "-1"], ["a", "-1"]], ["pneumothorax"], True, [RELATIVE, "-1"]),
    ],
)
def test_build_round_trip_in_each_layout(header, rows, classes, relative, expected):
    empty = np.zeros_like(MASK)
    # image a: class 0 empty, class 1 = MASK; image b: class 0 = MASK, class 1 empty
    table = {"a.jpg": np.stack([empty, MASK]), "b.jpg": np.stack([MASK, empty]),
             "a": np.stack([empty]), "b": np.stack([MASK])}
    sample = _frame(header, rows)
    layout = detect_layout(header, relative=relative)
    frame = build_submission(sample, layout, classes, _masks_for(table))
    assert frame["EncodedPixels"].tolist() == expected
    assert list(frame.columns) == header
    assert frame.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()  # the sample's row order
    validate_submission(frame, sample, layout, (3, 4))


def test_build_rejects_an_encoder_that_does_not_round_trip(monkeypatch):
    sample = _frame(["ImageId", "ClassId", "EncodedPixels"], [["a", "1", ""]])
    layout = detect_layout(sample.columns)
    monkeypatch.setattr(type(layout), "encode", lambda self, mask: "1 1")  # always the first pixel
    with pytest.raises(DataError, match="does not decode to the predicted mask"):
        build_submission(sample, layout, ["1"], lambda ids: MASK[None, None])


def test_unknown_class_in_sample_names_the_row():
    sample = _frame(["Image_Label", "EncodedPixels"], [["a.jpg_Fish", ""], ["a.jpg_Whale", ""]])
    with pytest.raises(DataError, match=r"row 3: class 'Whale'"):
        build_submission(sample, detect_layout(sample.columns), ["Fish"], lambda ids: np.zeros((1, 1, 3, 4)))


@pytest.fixture
def good():
    header = ["ImageId", "ClassId", "EncodedPixels"]
    sample = _frame(header, [["a", "1", ""], ["a", "2", ""], ["b", "1", ""], ["b", "2", ""]])
    frame = _frame(header, [["a", "1", ABSOLUTE], ["a", "2", ""], ["b", "1", ""], ["b", "2", "1 12"]])
    return sample, frame, detect_layout(header)


def test_validator_accepts_a_good_submission(good):
    sample, frame, layout = good
    validate_submission(frame, sample, layout, (3, 4))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: f.drop(index=2), r"lacks 1 rows of the sample, e.g. 'b'/'1'"),
        (lambda f: pd.concat([f, f.iloc[[1]]]), r"duplicate rows for 'a'/'2' \(2 rows\)"),
        (lambda f: pd.concat([f, _frame(list(f.columns), [["c", "1", ""]])]), r"1 rows not in the sample.*'c'/'1'"),
        (lambda f: f.iloc[[1, 0, 2, 3]], r"row 2 is 'a'/'2' but the sample has 'a'/'1'"),
        (lambda f: f.rename(columns={"ClassId": "Class"}), r"header ImageId,Class,EncodedPixels differs"),
        (lambda f: f.assign(EncodedPixels=["12 2", "", "", ""]), r"row 2 \('a'/'1'\).*past the end"),
        (lambda f: f.assign(EncodedPixels=["4 2 12", "", "", ""]), r"row 2 .*odd number"),
        (lambda f: f.assign(EncodedPixels=["", "", "-1", ""]), r"row 4 .*non-numeric"),
    ],
    ids=["missing", "duplicate", "extra", "order", "header", "past-end", "odd", "minus-one-in-absolute"],
)
def test_validator_rejects_each_broken_kind(good, breakage, message):
    sample, frame, layout = good
    with pytest.raises(DataError, match=message):
        validate_submission(breakage(frame).reset_index(drop=True), sample, layout, (3, 4))


def _load_script(repo_root, name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", repo_root / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_submission_script_writes_and_scores(tmp_path, repo_root, capsys):
    root = tmp_path / "data"
    (root / "test_images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(root / "test_images" / name), np.zeros((3, 4, 3), dtype=np.uint8))
    header = "ImageId,ClassId,EncodedPixels\n"
    (root / "sample_submission.csv").write_text(header + "a.png,1,\na.png,2,\nb.png,1,\nb.png,2,\n")
    # truth: a/1 = MASK (3 px); b/2 = pixels 1..2 (2 px); a/2 and b/1 empty (no row: csv_long)
    (root / "test_labels.csv").write_text(header + f"a.png,1,{ABSOLUTE}\nb.png,2,1 2\n")
    cfg = validate_config({
        "experiment": {"name": "sub", "output_root": str(tmp_path / "out")},
        "data": {"root": str(root), "format": "csv_long", "classes": ["1", "2"], "metric": "dice_pairs"},
        "postprocess": {"threshold": 0.5},
    })
    store = ProbStore.create(cfg.experiment.output_dir / "test", "test", ["b.png", "a.png"], ["1", "2"], 3, 4)
    probs = np.zeros((2, 2, 3, 4), dtype=np.float32)
    probs[1, 0] = 0.9 * MASK  # a/1 predicted exactly: Dice 1
    probs[0, 1, 0, 0] = 0.8  # b/2 predicted as pixel 1 only: Dice 2*1 / (1 + 2) = 2/3
    probs[0, 0, 2, 2] = 0.7  # b/1 predicted 1 px, truth empty: Dice 0
    probs[1, 1] = 0.3  # a/2 below the threshold: empty/empty, Dice 1
    store.write([0, 1], probs)
    store.finalize()
    config_path = tmp_path / "cfg.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = _load_script(repo_root, "make_submission").main(
        ["--config", str(config_path), "--score", str(root / "test_labels.csv")])
    written = pd.read_csv(cfg.experiment.output_dir / "submission.csv", dtype=str, keep_default_na=False)
    assert written.values.tolist() == [["a.png", "1", ABSOLUTE], ["a.png", "2", ""], ["b.png", "1", "9 1"],
                                       ["b.png", "2", "1 1"]]
    # pairs: a/1 = 1, a/2 = 1, b/1 = 0, b/2 = 2/3 -> mean (1 + 1 + 0 + 2/3) / 4 = 2/3
    assert result["score"] == pytest.approx(2 / 3)
    assert result["class_dice"] == pytest.approx({"1": 0.5, "2": (1 + 2 / 3) / 2})
    assert "test dice_pairs = 0.66667" in capsys.readouterr().out
    assert not [p.name for p in cfg.experiment.output_dir.iterdir() if p.name.startswith(".submission")]
