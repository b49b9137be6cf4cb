"""The probability layer: resizing, the store writer, true masks, the truth cache, folds and devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segfold.errors import ConfigError, DataError
from segfold.probs import (
    PackedTruth,
    ProbStore,
    StoreWriter,
    batch_truth,
    fit_mask,
    fold_checkpoints,
    fold_dirs,
    resize_probs,
    resolve_device,
    truth_masks,
)


def test_resize_rule_is_area_for_large_shrinks_else_bilinear():
    """The one rule for the OOF, validation and the test store: thresholds tuned on the OOF see the
    same kind of map as the test probabilities."""
    probs = torch.zeros(1, 1, 8, 8)
    probs[0, 0, 0, 0] = 1.0  # one hot pixel: its 4x4 block averages to 1/16
    torch.testing.assert_close(resize_probs(probs, (2, 2))[0, 0], torch.tensor([[1 / 16, 0.0], [0.0, 0.0]]))
    # small changes of size stay bilinear (4 -> 3: 5/6 of row 0 and 1/6 of row 1)
    ramp = torch.arange(4, dtype=torch.float32).reshape(1, 1, 4, 1).expand(1, 1, 4, 2)
    torch.testing.assert_close(resize_probs(ramp, (3, 2))[0, 0, :, 0], torch.tensor([1 / 6, 1.5, 17 / 6]))
    assert resize_probs(probs, (8, 8)) is probs


def test_store_writer_takes_the_first_image_size_and_checks_the_rest(tmp_path):
    with StoreWriter(tmp_path, "test", ["a", "b", "c"], ["x"]) as writer:
        writer.add(torch.full((2, 1, 4, 4), 0.5), torch.tensor([[0.2], [0.8]]), sizes=[(2, 2), (2, 2)], ids=["a", "b"])
        writer.add(torch.ones(1, 1, 2, 2), torch.tensor([[1.0]]), sizes=[(2, 2)], ids=["c"])
    store = writer.store
    assert store.shape == (3, 1, 2, 2) and store.image_ids == ["a", "b", "c"]
    assert store.probs[0].tolist() == [[[128, 128], [128, 128]]]  # 4x4 -> 2x2 by area: still 0.5 -> 128
    np.testing.assert_allclose(store.cls[:, 0], [0.2, 0.8, 1.0])
    with pytest.raises(DataError, match="test image b is 3x3 but the first one is 2x2"):
        with StoreWriter(tmp_path / "bad", "test", ["a", "b"], ["x"]) as writer:
            writer.add(torch.zeros(2, 1, 2, 2), sizes=[(2, 2), (3, 3)], ids=["a", "b"])
    assert not list((tmp_path / "bad").iterdir())  # nothing left behind
    with StoreWriter(tmp_path / "fixed", "oof", ["a"], ["x"], size=(1, 1)) as writer:
        writer.add(torch.ones(1, 1, 2, 2))
    assert writer.store.shape == (1, 1, 1, 1)


def test_true_masks_resize_by_nearest_and_one_hot_index_maps():
    # multiclass (3 classes) 2x4 index map with an ignore label 255, shrunk to 1x2 by nearest neighbour:
    # cv2 nearest picks source column floor(x * 4 / 2) = 0, 2 and row 0
    index = np.array([[0, 1, 2, 255], [1, 1, 1, 1]], dtype=np.uint8)
    mask = fit_mask(index, 3, 1, 2)
    assert mask.tolist() == [[[True, False]], [[False, False]], [[False, True]]]
    assert fit_mask(index, 3, 2, 4)[:, 0, 3].tolist() == [False, False, False]  # ignored pixel: no class
    with pytest.raises(DataError, match="2 classes but the probability store has 3"):
        fit_mask(np.zeros((2, 4, 4), np.uint8), 3, 4, 4)


class _Labels:
    """Annotations stand-in: native (2, 4) index maps of a 3-class multiclass problem."""

    maps = {"a": np.array([[0, 1, 2, 255], [1, 1, 1, 1]], dtype=np.uint8), "b": np.full((2, 4), 2, np.uint8)}

    def mask(self, image_id):
        return self.maps[image_id]


def test_batch_truth_is_the_batch_mask_or_the_resized_label():
    labels = _Labels()
    batch = {"mask": torch.from_numpy(np.stack([labels.maps["a"], labels.maps["b"]]).astype(np.int64)),
             "image_id": ["a", "b"]}
    same = batch_truth(batch, labels, "multiclass", 3, (2, 4))
    assert same.dtype == torch.bool and same.shape == (2, 3, 2, 4)
    assert same[0, :, 0, 3].tolist() == [False, False, False]  # 255 is no class
    assert same[0, :, 0, 1].tolist() == [False, True, False] and same[1, 2].all()
    small = batch_truth(batch, labels, "multiclass", 3, (1, 2))  # another size: the labels, resized
    assert small[0].tolist() == [[[True, False]], [[False, False]], [[False, True]]]
    assert torch.equal(small, torch.from_numpy(truth_masks(labels, ["a", "b"], (1, 2), 3)).bool())


def test_packed_truth_gives_back_the_masks_within_its_budget():
    rng = np.random.default_rng(0)
    masks = {f"i{k}": rng.random((2, 5, 7)) > 0.5 for k in range(4)}
    reads = []

    def truth(image_id):
        reads.append(image_id)
        return masks[image_id]

    # each packed mask takes 2 classes x ceil(35 / 8) = 10 bytes: a budget of 25 keeps two
    packed = PackedTruth(truth, list(masks), max_bytes=25)
    for _ in range(2):
        for image_id, mask in masks.items():
            np.testing.assert_array_equal(packed(image_id), mask)
    assert reads == ["i0", "i1", "i2", "i3", "i2", "i3"]  # the first two came from memory the second time
    np.testing.assert_array_equal(packed.channel(["i1", "i3"], 1, (2, 5, 7)),
                                  np.stack([masks["i1"][1], masks["i3"][1]]))


def test_fold_folders_and_checkpoints(tmp_path):
    for name in ("fold0", "fold2", "fold10", "folds", "fold1x"):
        (tmp_path / name).mkdir()
    (tmp_path / "fold3").write_text("a file, not a fold folder")
    for k in (0, 10):
        (tmp_path / f"fold{k}" / "best.pt").write_bytes(b"")
    store = ProbStore.create(tmp_path / "fold2", "oof", ["a"], ["x"], 1, 1)
    store.write(0, np.zeros((1, 1, 1)))
    store.finalize()
    assert list(fold_dirs(tmp_path)) == [0, 2, 10]
    assert list(fold_dirs(tmp_path, with_store="oof")) == [2]
    found, missing = fold_checkpoints(tmp_path)
    assert sorted(found) == [0, 10] and missing == [2]
    found, missing = fold_checkpoints(tmp_path, folds=[0, 1])
    assert list(found) == [0] and missing == [1]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    with pytest.raises(ConfigError, match="infer.device = 'gpu0' is not a device"):
        resolve_device("gpu0", key="infer.device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device = 'cuda' but no CUDA device"):
            resolve_device("cuda", key="train.device")
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
