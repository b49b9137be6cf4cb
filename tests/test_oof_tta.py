"""The OOF predicted with the test's TTA (`infer.oof_tta`, `scripts/oof.py --tta`), and the warning when the
thresholds were tuned on probabilities of another TTA than the test store's.

The expected OOF rows are computed by hand: each fold's own checkpoint on its own validation images,
the image and its horizontal mirror through the network, the mirrored probabilities flipped back,
sigmoids averaged (never logits).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfold.data.dataset import SegmentationDataset
from segfold.data.transforms import build_transforms
from segfold.probs import ProbStore, load_checkpoint_model, open_oof, read_record, tta_label, tta_mismatch
from segfold.train.checkpoint import save_checkpoint
from test_provenance import demo, make_cfg, save_best, write_fold_oof  # noqa: F401  (demo is a fixture)


def _experiment(demo, tmp_path, **infer):  # noqa: F811
    cfg = make_cfg(demo, tmp_path / "out")
    if infer:
        cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update=infer)})
    for fold in (0, 1):
        path = save_best(cfg, fold, seed=10 + fold)
        state = torch.load(path, weights_only=True)  # a sharper head: probabilities far from 0.5
        state["model"] = {k: v * 40 if k.startswith("segmentation_head") else v for k, v in state["model"].items()}
        save_checkpoint(path, state)
        write_fold_oof(cfg, fold, seed=fold)
    return cfg


def _hflip_by_hand(cfg, fold, image_id):
    model, _ = load_checkpoint_model(cfg.experiment.output_dir / f"fold{fold}" / "best.pt", "cpu")
    norm = model.pretrained_cfg
    dataset = SegmentationDataset(cfg.data, [image_id], mean=norm["mean"], std=norm["std"], folder="train",
                                  transforms=build_transforms(cfg.data, "valid"))
    x = dataset[0]["image"][None]
    with torch.no_grad():
        plain = torch.sigmoid(model(x))
        mirrored = torch.flip(torch.sigmoid(model(torch.flip(x, [3]))), [3])
    return ((plain + mirrored) / 2)[0].numpy(), plain[0].numpy()


def test_oof_with_tta_predicts_each_fold_with_its_own_model(demo, tmp_path):  # noqa: F811
    from segfold.oof import gather_oof

    cfg = _experiment(demo, tmp_path)
    result = gather_oof(cfg, tta="hflip")
    assert result["tta"] == "hflip" and result["folds"] == [0, 1]
    store = ProbStore.open(cfg.experiment.output_dir / "oof", "oof")
    assert store.provenance["tta"] == "hflip" and store.provenance["stage"] == "oof"
    assert sorted(entry["fold"] for entry in store.provenance["checkpoints"]) == [0, 1]
    for image_id, fold in (("train_0001.jpg", 0), ("train_0004.jpg", 1)):
        expected, plain = _hflip_by_hand(cfg, fold, image_id)
        got = store.read(store.row_of(image_id))
        assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-4
        assert np.abs(expected - plain).max() > 0.1  # the mirror copy matters: the test can fail
        other, _ = _hflip_by_hand(cfg, 1 - fold, image_id)
        assert np.abs(other - expected).max() > 0.1  # and so does which fold's model predicts it

    # without TTA the gathered OOF is the trainer's stores, copied as stored
    gather_oof(cfg, tta="none")
    plain_store = ProbStore.open(cfg.experiment.output_dir / "oof", "oof")
    fold1 = ProbStore.open(cfg.experiment.output_dir / "fold1", "oof")
    np.testing.assert_array_equal(plain_store.probs[plain_store.row_of("train_0004.jpg")],
                                  fold1.probs[fold1.row_of("train_0004.jpg")])
    assert plain_store.provenance["tta"] == "none"


def test_oof_tta_follows_the_config(demo, tmp_path):  # noqa: F811
    from segfold.oof import gather_oof

    cfg = _experiment(demo, tmp_path, tta="hflip", oof_tta=True)
    assert gather_oof(cfg)["tta"] == "hflip"
    cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"oof_tta": False})})
    assert gather_oof(cfg)["tta"] == "none"


def test_a_failed_tta_oof_leaves_the_previous_oof_in_place(demo, tmp_path):  # noqa: F811
    from segfold.errors import TrainingError
    from segfold.oof import gather_oof

    cfg = _experiment(demo, tmp_path)
    gather_oof(cfg, tta="none")
    before = ProbStore.open(cfg.experiment.output_dir / "oof", "oof").provenance["id"]
    (cfg.experiment.output_dir / "fold1" / "best.pt").unlink()
    with pytest.raises(TrainingError, match=r"fold\(s\) \[1\] have no best.pt"):
        gather_oof(cfg, tta="hflip", allow_stale=True)
    assert not list((cfg.experiment.output_dir / "oof").glob("*.partial"))
    assert ProbStore.open(cfg.experiment.output_dir / "oof", "oof").provenance["id"] == before


def test_thresholds_tuned_without_tta_warn_when_the_test_uses_tta(demo, tmp_path, caplog):  # noqa: F811
    from segfold.oof import gather_oof
    from segfold.postprocess import tune_thresholds

    cfg = _experiment(demo, tmp_path, tta="hflip")
    gather_oof(cfg, tta="none")
    with caplog.at_level(logging.WARNING):
        tune_thresholds(cfg)
    assert "tuned on OOF probabilities predicted with TTA 'none' but the test probabilities use 'hflip'" \
        in caplog.text
    assert read_record(cfg.experiment.output_dir / "thresholds.json")["oof_tta"] == "none"

    caplog.clear()
    gather_oof(cfg, tta="hflip")
    with caplog.at_level(logging.WARNING):
        tune_thresholds(cfg)
    assert "tuned on OOF" not in caplog.text
    assert read_record(cfg.experiment.output_dir / "thresholds.json")["oof_tta"] == "hflip"


def test_tta_mismatch_names_both_sides():
    assert tta_mismatch("hflip", "hflip") is None
    assert tta_mismatch(None, "flips") is None  # unknown (an old store): no guess
    message = tta_mismatch("none", "flips+scales[1,1.25]")
    assert "'none'" in message and "'flips+scales[1,1.25]'" in message and "infer.oof_tta: true" in message
    assert tta_mismatch("none+scales[1,1.5]", "none+scales[1,1.25]")  # other factors: another TTA
    assert tta_mismatch("flips+scales", "flips+scales[0.75,1]") is None  # an old record: factors unknown
    assert tta_mismatch("flips+scales", "flips") is not None
    # the label: sorted factors, 1.0 added as build_tta adds it; [1.0] alone is no multi-scale
    assert tta_label({"tta": "none", "scales": [1.5]}) == "none+scales[1,1.5]"
    assert tta_label({"tta": "d4", "scales": [1.25, 0.75, 1.0]}) == "d4+scales[0.75,1,1.25]"
    assert tta_label({"tta": "hflip", "scales": [1.0]}) == tta_label({"tta": "hflip"}) == "hflip"


def _scales_by_hand(cfg, fold, image_id, scale):
    """Fold `fold`'s probabilities of `image_id`: the mean of sigmoid(model(x)) and of the model's sigmoid on x
    resized by `scale` (bilinear), resized back."""
    model, _ = load_checkpoint_model(cfg.experiment.output_dir / f"fold{fold}" / "best.pt", "cpu")
    norm = model.pretrained_cfg
    dataset = SegmentationDataset(cfg.data, [image_id], mean=norm["mean"], std=norm["std"], folder="train",
                                  transforms=build_transforms(cfg.data, "valid"))
    x = dataset[0]["image"][None]
    height, width = x.shape[-2:]
    with torch.no_grad():
        plain = torch.sigmoid(model(x))
        big = F.interpolate(x, size=(int(height * scale), int(width * scale)), mode="bilinear", align_corners=False)
        back = F.interpolate(torch.sigmoid(model(big)), size=(height, width), mode="bilinear", align_corners=False)
    return ((plain + back) / 2)[0].numpy()


def test_oof_without_tta_honours_scales_as_predict_does(demo, tmp_path, caplog):  # noqa: F811
    """`oof.py --tta none --scales 1.0 1.5`: each fold's validation images through the multi-scale predictor
    (not the trainer's single-scale store); the store records the scales, and thresholds tuned on it warn
    when the test is predicted without them."""
    from segfold.oof import gather_oof
    from segfold.postprocess import tune_thresholds

    cfg = _experiment(demo, tmp_path)
    single = gather_oof(cfg, tta="none")
    single_store = ProbStore.open(cfg.experiment.output_dir / "oof", "oof")
    single_rows = {i: single_store.read(single_store.row_of(i)) for i in ("train_0001.jpg", "train_0004.jpg")}
    assert single["tta_label"] == "none" and single_store.provenance["scales"] == [1.0]

    result = gather_oof(cfg, tta="none", scales=[1.0, 1.5])
    assert result["tta"] == "none" and result["scales"] == [1.0, 1.5] and result["tta_label"] == "none+scales[1,1.5]"
    store = ProbStore.open(cfg.experiment.output_dir / "oof", "oof")
    assert store.provenance["scales"] == [1.0, 1.5] and tta_label(store.provenance) == "none+scales[1,1.5]"
    assert open_oof(cfg.experiment.output_dir).tta == "none+scales[1,1.5]"
    for image_id, fold in (("train_0001.jpg", 0), ("train_0004.jpg", 1)):
        expected = _scales_by_hand(cfg, fold, image_id, 1.5)
        got = store.read(store.row_of(image_id))
        assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-4
        assert np.abs(got - single_rows[image_id]).max() > 0.05  # the 1.5x copy changed the OOF

    with caplog.at_level(logging.WARNING):
        tune_thresholds(cfg)  # the test's TTA: infer.tta 'none', infer.scales [1.0]
    assert "tuned on OOF probabilities predicted with TTA 'none+scales[1,1.5]' but the test probabilities use " \
        "'none'" in caplog.text
    assert read_record(cfg.experiment.output_dir / "thresholds.json")["oof_tta"] == "none+scales[1,1.5]"


def test_oof_comes_from_the_checkpoint_the_test_gets(demo, tmp_path):  # noqa: F811
    """The trainer's stores are best.pt's; with infer.checkpoint last.pt the OOF is predicted again, even
    without TTA, so that thresholds are tuned on the weights that predict the test images."""
    import shutil

    from segfold.oof import gather_oof

    cfg = _experiment(demo, tmp_path, checkpoint="last.pt")
    for fold in (0, 1):  # last.pt: fold k's weights are the other fold's best.pt (different from its own)
        shutil.copy(cfg.experiment.output_dir / f"fold{1 - fold}" / "best.pt", tmp_path / f"b{fold}.pt")
    for fold in (0, 1):
        shutil.copy(tmp_path / f"b{fold}.pt", cfg.experiment.output_dir / f"fold{fold}" / "last.pt")
    gather_oof(cfg, tta="none")
    store = ProbStore.open(cfg.experiment.output_dir / "oof", "oof")
    assert {entry["path"].rsplit("/", 1)[-1] for entry in store.provenance["checkpoints"]} == {"last.pt"}
    _, fold1_last = _hflip_by_hand(cfg, 0, "train_0004.jpg")  # fold 0's best.pt is fold 1's last.pt
    assert np.abs(store.read(store.row_of("train_0004.jpg")) - fold1_last).max() <= 0.5 / 255 + 1e-4
    trainer = ProbStore.open(cfg.experiment.output_dir / "fold1", "oof")
    assert np.abs(store.read(store.row_of("train_0004.jpg")) - trainer.read(trainer.row_of("train_0004.jpg"))
                  ).max() > 0.1


def test_by_fold_report_agrees_with_the_gather_and_the_tuning(demo, tmp_path):  # noqa: F811
    """`oof.py --by-fold`: per fold at 0.5 and tuned; its 'all' rows match the score of the gather (the
    scorer's route) and the tuned score of thresholds.json (the histogram route); fold rows average to it."""
    import json

    from segfold.oof import fold_report, gather_oof
    from segfold.postprocess import tune_thresholds

    cfg = _experiment(demo, tmp_path)
    (cfg.experiment.output_dir / "folds.csv").write_text(
        "ImageId,fold\n" + "".join(f"train_{i:04d}.jpg,{i // 3}\n" for i in range(6)))
    gathered = gather_oof(cfg, tta="none")
    tune_thresholds(cfg)
    report = fold_report(cfg)
    rows = {(r["rules"], r["fold"]): r for r in report["rows"]}
    assert set(rows) == {(rule, fold) for rule in ("threshold 0.5", "tuned") for fold in ("0", "1", "all")}
    assert rows["threshold 0.5", "0"]["images"] == 3 and rows["tuned", "all"]["images"] == 6
    assert rows["threshold 0.5", "all"]["score"] == pytest.approx(gathered["score"], abs=1e-9)
    tuned = json.loads((cfg.experiment.output_dir / "thresholds.json").read_text())
    assert rows["tuned", "all"]["score"] == pytest.approx(tuned["score_after"], abs=1e-9)
    for rule in ("threshold 0.5", "tuned"):  # 3 images per fold: the mean of the two folds is the whole
        halves = (rows[rule, "0"]["score"] + rows[rule, "1"]["score"]) / 2
        assert halves == pytest.approx(rows[rule, "all"]["score"], abs=1e-9)
    assert "fold images" in report["table"].replace("  ", " ").replace("  ", " ")
