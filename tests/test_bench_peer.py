"""scripts/bench_peer.py: its independent Dice, and one epoch of the peer recipe on generated data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from segfold.metrics.competition import dice_pairs
from test_submission import _load_script


@pytest.fixture(scope="module")
def peer(request):
    return _load_script(request.config.rootpath, "bench_peer")


def test_dice_per_pair_by_hand_and_against_the_chain_scorer(peer):
    pred = np.zeros((2, 3, 2, 4), dtype=bool)
    truth = np.zeros((2, 3, 2, 4), dtype=bool)
    pred[0, 0, 0, :2] = True  # 2 predicted pixels, 2 true, 1 shared: 2 * 1 / 4
    truth[0, 0, 0, 1:3] = True
    truth[0, 1, 1, :3] = True  # nothing predicted: 0
    pred[1, 2] = True  # 8 predicted, nothing true: 0
    # (0, 2), (1, 0), (1, 1): both empty, 1 by the Severstal rule
    expected = np.array([[0.5, 0.0, 1.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(peer.dice_per_pair(pred, truth), expected)

    rng = np.random.default_rng(0)
    pred = rng.random((5, 4, 16, 16)) > 0.7
    truth = rng.random((5, 4, 16, 16)) > 0.8
    truth[2] = False
    pred[2, :2] = False
    np.testing.assert_allclose(peer.dice_per_pair(pred, truth), np.asarray(dice_pairs(pred, truth, empty_score=1.0)))


@pytest.mark.slow
def test_peer_trains_each_fold_of_the_folds_file_and_writes_the_oof(tmp_path, peer, capsys):
    from segfold.data.demo import make_demo_data

    root = make_demo_data(tmp_path / "demo", seed=0, n_train=12, n_test=1)
    raw = {"experiment": {"name": "peer", "output_root": str(tmp_path / "out"), "seed": 1},
           "data": {"root": str(root), "image_size": [32, 64], "folds": {"n_folds": 2}}}
    config = tmp_path / "peer.yaml"
    config.write_text(yaml.safe_dump(raw))
    ids = sorted(path.name for path in (root / "train_images").iterdir())
    (tmp_path / "out" / "peer").mkdir(parents=True)
    # an uneven split: the peer must use this file, not folds of its own
    pd.DataFrame({"ImageId": ids, "fold": [0] * 3 + [1] * (len(ids) - 3)}).to_csv(
        tmp_path / "out" / "peer" / "folds.csv", index=False)

    peer.main(["--config", str(config), "--epochs", "1", "--threads", "1"])
    summary = json.loads((tmp_path / "out" / "peer" / "peer" / "peer.json").read_text())
    assert summary["recipe"]["epochs"] == 1 and summary["recipe"]["encoder"] == "efficientnet-lite0"
    assert [summary["folds"][k]["images"] for k in ("0", "1")] == [3, len(ids) - 3]
    assert summary["oof"]["images"] == len(ids)
    classes = list(summary["oof"]["per_class"])
    assert classes == ["1", "2", "3", "4"]
    # every (image, class) pair counts once: the OOF is the image-weighted mean of the folds,
    # and the plain mean of the classes
    by_folds = sum(f["dice"] * f["images"] for f in summary["folds"].values()) / len(ids)
    assert summary["oof"]["dice"] == pytest.approx(by_folds)
    assert summary["oof"]["dice"] == pytest.approx(np.mean(list(summary["oof"]["per_class"].values())))
    assert 0.0 <= summary["oof"]["dice"] <= 1.0
    out = capsys.readouterr().out
    assert "mean/std [0.5, 0.5, 0.5]/[0.5, 0.5, 0.5]" in out and "peer OOF Dice" in out
