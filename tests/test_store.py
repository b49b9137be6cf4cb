"""Probability stores: round trip, quantisation, atomic finalize, and the errors on broken stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segfold.errors import DataError
from segfold.infer.store import ProbStore, store_exists, store_paths


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
    assert (tmp_path / "oof.u8").stat().st_size == 36
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
    (tmp_path / "oof.u8").write_bytes(b"\0" * 5)
    with pytest.raises(DataError, match="5 bytes, expected 8"):
        ProbStore.open(tmp_path, "oof")
