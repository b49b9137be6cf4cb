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
    assert summary["merged"] == {}
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


def _peer_setup(tmp_path, folds):
    """Demo data, a config and a folds.csv with the given fold of each image; returns (config path, peer dir)."""
    from segfold.data.demo import make_demo_data

    root = make_demo_data(tmp_path / "demo", seed=0, n_train=len(folds), n_test=1)
    raw = {"experiment": {"name": "peer", "output_root": str(tmp_path / "out"), "seed": 1},
           "data": {"root": str(root), "image_size": [32, 64], "folds": {"n_folds": 2}}}
    config = tmp_path / "peer.yaml"
    config.write_text(yaml.safe_dump(raw))
    ids = sorted(path.name for path in (root / "train_images").iterdir())
    out = tmp_path / "out" / "peer"
    out.mkdir(parents=True)
    pd.DataFrame({"ImageId": ids, "fold": folds}).to_csv(out / "folds.csv", index=False)
    return config, out


def _earlier(path, peer, folds, epochs=20):
    """A peer.json as an earlier run writes it, with the given {fold: (images, per-class Dice)}."""
    recipe = dict(peer.RECIPE, epochs=epochs, image_size=[32, 64])
    per_fold = {fold: {"dice": float(np.mean(dice)), "images": images,
                       "per_class": dict(zip(["1", "2", "3", "4"], dice, strict=True))}
                for fold, (images, dice) in folds.items()}
    path.write_text(json.dumps({"recipe": recipe, "folds": per_fold, "oof": {}}))
    return path


def test_merge_pools_the_folds_of_earlier_runs_pair_by_pair(tmp_path, peer, capsys):
    config, out = _peer_setup(tmp_path, [0, 0, 0, 1])
    first = _earlier(tmp_path / "a.json", peer, {"0": (3, [0.5, 1.0, 0.0, 0.5])})
    second = _earlier(tmp_path / "b.json", peer, {"1": (1, [1.0, 1.0, 1.0, 0.0])})
    # every fold is in a file: nothing is trained
    peer.main(["--config", str(config), "--merge", str(second), str(first), "--out", str(tmp_path / "all.json")])
    summary = json.loads((tmp_path / "all.json").read_text())
    assert list(summary["folds"]) == ["0", "1"]
    assert summary["merged"] == {"0": str(first), "1": str(second)}
    # per class (3 * fold 0 + 1 * fold 1) / 4 images
    assert summary["oof"]["per_class"] == pytest.approx({"1": 0.625, "2": 1.0, "3": 0.25, "4": 0.375})
    assert summary["oof"]["images"] == 4
    assert summary["oof"]["dice"] == pytest.approx((3 * 0.5 + 1 * 0.75) / 4)
    assert "peer OOF Dice 0.5625 over 4 images" in capsys.readouterr().out


def test_merge_trains_only_the_folds_no_file_holds(tmp_path, peer, monkeypatch):
    config, out = _peer_setup(tmp_path, [0, 0, 0, 1])
    first = _earlier(tmp_path / "a.json", peer, {"0": (3, [0.5, 1.0, 0.0, 0.5])}, epochs=1)
    trained = []
    monkeypatch.setattr(peer, "train_fold", lambda model, loader, epochs, lr, log: trained.append(
        len(loader.dataset)))
    # fold 1's one image: Dice 1, 0, 1, 0
    monkeypatch.setattr(peer, "score_fold", lambda *args: np.array([[1.0, 0.0, 1.0, 0.0]]))
    peer.main(["--config", str(config), "--epochs", "1", "--threads", "1", "--merge", str(first)])
    summary = json.loads((out / "peer" / "peer.json").read_text())
    assert trained == [3]  # fold 1 only, on fold 0's three images
    assert summary["merged"] == {"0": str(first)}
    assert summary["folds"]["1"] == {"dice": 0.5, "images": 1, "per_class": {"1": 1.0, "2": 0.0, "3": 1.0, "4": 0.0}}
    assert summary["oof"]["dice"] == pytest.approx((3 * 0.5 + 1 * 0.5) / 4)
    assert summary["oof"]["per_class"] == pytest.approx({"1": 0.625, "2": 0.75, "3": 0.25, "4": 0.375})


def test_merge_refuses_other_recipes_folds_held_twice_and_other_fold_sizes(tmp_path, peer, capsys):
    config, _ = _peer_setup(tmp_path, [0, 0, 0, 1])
    fold0 = _earlier(tmp_path / "a.json", peer, {"0": (3, [0.5, 1.0, 0.0, 0.5])})
    fold1 = _earlier(tmp_path / "b.json", peer, {"1": (1, [1.0, 1.0, 1.0, 0.0])})
    stale = _earlier(tmp_path / "c.json", peer, {"1": (2, [1.0, 1.0, 1.0, 0.0])})
    (tmp_path / "broken.json").write_text("{not json")
    run = ["--config", str(config), "--out", str(tmp_path / "x.json"), "--merge"]

    def refused(argv):
        with pytest.raises(SystemExit) as exit_info:
            peer.main(argv)
        assert exit_info.value.code == 1
        return capsys.readouterr().err

    assert "a.json: recipe.epochs is 20 there and 5 in this run" in refused(
        ["--epochs", "5", *run, str(fold0), str(fold1)])
    assert f"fold 0 is also in {fold0}" in refused([*run, str(fold0), str(fold1), str(fold0)])
    assert "--folds 1: that fold is already in a --merge file" in refused(
        ["--folds", "1", *run, str(fold0), str(fold1)])
    err = refused([*run, str(fold0), str(stale)])
    assert "c.json: fold 1 holds 2 images" in err and "this folds.csv 1" in err and "rerun that fold" in err
    assert "broken.json: not a peer.json" in refused([*run, str(tmp_path / "broken.json")])
    (tmp_path / "fold_name.json").write_text(fold0.read_text().replace('"0"', '"zero"'))
    assert "fold_name.json: not a peer.json" in refused([*run, str(tmp_path / "fold_name.json")])
    assert not (tmp_path / "x.json").exists()
