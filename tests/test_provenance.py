"""Every artefact knows what it was made from; a stage refuses one older than its inputs (issue 13).

Each test builds a small experiment on generated data, makes an artefact stale the way a user would
(retrain a fold, gather before the last fold, a failed predict), and asserts the one-line message
that names the stage to rerun, that `allow_stale` turns it into a warning, and that nothing was lost.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from segfold.config.load import validate_config
from segfold.errors import DataError, StaleError
from segfold.models import build_model
from segfold.probs import (
    ProbStore,
    StoreView,
    StoreWriter,
    checkpoint_entry,
    new_record,
    open_oof,
    open_test,
    read_record,
)
from segfold.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """6 generated training and 2 test images (128 x 256, four classes)."""
    from segfold.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("data") / "demo", seed=2, n_train=6, n_test=2)


def make_cfg(demo, out, n_folds=2, name="exp"):
    return validate_config({
        "experiment": {"name": name, "output_root": str(out)},
        "data": {"root": str(demo), "image_size": [32, 64], "metric_size": [32, 64], "folds": {"n_folds": n_folds}},
        "model": {"arch": "Unet", "encoder_name": "test_resnet", "encoder_weights": None,
                  "params": {"decoder_channels": [8, 8, 8, 8, 8]}},
        "infer": {"device": "cpu", "batch_size": 2, "tta": "none"},
        "postprocess": {"tune": {"optuna_trials": 0, "thresholds": [0.3, 0.5], "min_areas": [0, 10]}},
    })


def save_best(cfg, fold, seed=0, epoch=1):
    """A trained-looking `fold<k>/best.pt` (atomically written, as training does)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, 4)
    path = cfg.experiment.output_dir / f"fold{fold}" / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": epoch,
                           "score": 0.5})
    return path


def write_fold_oof(cfg, fold, seed=0):
    """The fold's OOF store as training writes it (record of its best.pt), for half of the 6 images each."""
    ids = [f"train_{i:04d}.jpg" for i in range(6)][fold * 3:(fold + 1) * 3]
    best = cfg.experiment.output_dir / f"fold{fold}" / "best.pt"
    record = new_record("train", cfg, checkpoints=[checkpoint_entry(best, fold, 1)], folds=[fold])
    generator = torch.Generator().manual_seed(seed)
    with StoreWriter(best.parent, "oof", ids, cfg.data.classes, (32, 64), provenance=record) as writer:
        writer.add(torch.rand(len(ids), 4, 32, 64, generator=generator))
    return writer.store


def test_gathered_oof_without_a_later_fold_is_refused_by_tune_thresholds(demo, tmp_path, caplog):
    from segfold.oof import gather_oof
    from segfold.postprocess import tune_thresholds

    cfg = make_cfg(demo, tmp_path)
    out = cfg.experiment.output_dir
    for fold in (0, 1):
        save_best(cfg, fold)
    write_fold_oof(cfg, 0)
    with caplog.at_level(logging.WARNING, logger="segfold"):
        gather_oof(cfg)
    assert "fold(s) [1] of the experiment's 2 are missing (used: [0])" in caplog.text
    write_fold_oof(cfg, 1)  # fold 1 trained after oof.py ran
    with pytest.raises(StaleError, match=r"oof/oof\.\* is stale: fold\(s\) \[1\] have OOF stores it does not hold "
                                         r"\(it was gathered from folds \[0\]\); rerun scripts/oof\.py \(or pass "
                                         r"--allow-stale"):
        tune_thresholds(cfg)
    assert not (out / "thresholds.json").exists()
    assert len(ProbStore.open(out / "oof", "oof")) == 3 and len(ProbStore.open(out / "fold1", "oof")) == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segfold"):
        assert len(open_oof(out, allow_stale=True)) == 3
    assert "is stale" in caplog.text and "--allow-stale" in caplog.text
    gather_oof(cfg)  # rerun as asked: both folds, no complaint
    assert len(open_oof(out)) == 6 and read_record(out / "oof" / "oof.json")["folds"] == [0, 1]


def test_fold_oof_made_from_another_best_pt_is_refused(demo, tmp_path):
    cfg = make_cfg(demo, tmp_path)
    save_best(cfg, 0)
    before = write_fold_oof(cfg, 0).read(np.arange(3))
    best = save_best(cfg, 0, seed=5, epoch=4)  # fold 0 retrained; its OOF was not rewritten
    with pytest.raises(StaleError, match=rf"fold0/oof\.\* is stale: {best} was rewritten after it was made \(it used "
                                         r"epoch 1\); rerun scripts/train.py --fold 0 --resume"):
        open_oof(cfg.experiment.output_dir)
    assert np.array_equal(ProbStore.open(best.parent, "oof").read(np.arange(3)), before)


def test_test_store_from_other_checkpoints_is_refused_by_make_submission(demo, tmp_path, caplog):
    from segfold.predict import predict_test
    from segfold.submit import make_submission

    cfg = make_cfg(demo, tmp_path)
    out = cfg.experiment.output_dir
    for fold in (0, 1):
        save_best(cfg, fold)
    predict_test(cfg)
    make_submission(cfg)
    submission = (out / "submission.csv").read_bytes()
    record = read_record(out / "submission.json")
    assert [entry["path"] for entry in record["inputs"]] == [str((out / "test" / "test.json").resolve())]
    test_record = read_record(out / "test" / "test.json")
    assert [(c["fold"], c["epoch"]) for c in test_record["checkpoints"]] == [(0, 1), (1, 1)]
    assert test_record["tta"] == "none" and test_record["folds"] == [0, 1]

    best = save_best(cfg, 1, seed=7, epoch=3)  # fold 1 retrained, predict.py not rerun
    with pytest.raises(StaleError, match=rf"test/test\.\* is stale: {best} was rewritten after it was made \(it used "
                                         r"epoch 1\); rerun scripts/predict\.py"):
        make_submission(cfg)
    assert (out / "submission.csv").read_bytes() == submission
    with caplog.at_level(logging.WARNING, logger="segfold"):
        make_submission(cfg, allow_stale=True)
    assert "rerun scripts/predict.py" in caplog.text


def test_failed_predict_leaves_its_old_store_refused(demo, tmp_path, monkeypatch):
    import segfold.predict.run as run
    from segfold.predict import predict_test
    from segfold.submit import make_submission

    cfg = make_cfg(demo, tmp_path)
    out = cfg.experiment.output_dir
    save_best(cfg, 0)
    old = predict_test(cfg).read(np.arange(2))

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(run, "predict_images", broken)
    with pytest.raises(RuntimeError):
        predict_test(cfg)
    with pytest.raises(StaleError, match=r"test/test\.\* is stale: a later run that rewrote it failed \(at .*\), so "
                                         r"it is an earlier run's; rerun scripts/predict\.py"):
        make_submission(cfg)
    assert np.array_equal(ProbStore.open(out / "test", "test").read(np.arange(2)), old)
    monkeypatch.undo()
    predict_test(cfg)  # a run that finishes clears the mark
    make_submission(cfg)


def test_predict_names_missing_folds_and_a_fold_trained_later_makes_the_store_stale(demo, tmp_path, caplog):
    from segfold.predict import predict_test

    cfg = make_cfg(demo, tmp_path, n_folds=3)
    for fold in (0, 2):
        save_best(cfg, fold)
    with caplog.at_level(logging.WARNING, logger="segfold"):
        predict_test(cfg)
    assert ("the test store averages folds [0, 2] only: fold(s) [1] of the experiment's 3 are missing (used: [0, 2]) "
            "(they have no best.pt: train them first)") in caplog.text
    assert read_record(cfg.experiment.output_dir / "test" / "test.json")["missing_folds"] == [1]
    save_best(cfg, 1)
    with pytest.raises(StaleError, match=r"test/test\.\* is stale: fold\(s\) \[1\] have a best.pt now but it was "
                                         r"predicted with folds \[0, 2\] only; rerun scripts/predict\.py"):
        open_test(cfg.experiment.output_dir)


def test_oof_of_fewer_folds_than_the_experiment_is_named(demo, tmp_path, caplog):
    cfg = make_cfg(demo, tmp_path, n_folds=3)
    save_best(cfg, 0)
    write_fold_oof(cfg, 0)
    with caplog.at_level(logging.WARNING, logger="segfold"):
        view = open_oof(cfg.experiment.output_dir, expected_folds=[0, 1, 2])
    assert view.folds == [0]
    assert "the OOF of" in caplog.text and "fold(s) [1, 2] of the experiment's 3 are missing (used: [0])" in caplog.text


def test_thresholds_tuned_on_another_oof_are_refused_by_make_submission(demo, tmp_path):
    from segfold.oof import gather_oof
    from segfold.postprocess import postprocess_for, tune_thresholds

    cfg = make_cfg(demo, tmp_path)
    out = cfg.experiment.output_dir
    save_best(cfg, 0)
    write_fold_oof(cfg, 0)
    tune_thresholds(cfg)
    tuned = (out / "thresholds.json").read_text()
    gather_oof(cfg)  # the same probabilities, gathered: still the OOF it was tuned on
    postprocess_for(cfg, cfg.data.classes)
    save_best(cfg, 1)
    write_fold_oof(cfg, 1)
    gather_oof(cfg)  # now with fold 1: the thresholds were tuned without it
    with pytest.raises(StaleError, match=r"thresholds.json is stale: it was tuned on another OOF than the one there "
                                         r"now \(folds \[0\] then, folds \[0, 1\] now\); rerun "
                                         r"scripts/tune_thresholds\.py"):
        postprocess_for(cfg, cfg.data.classes)
    assert (out / "thresholds.json").read_text() == tuned


def test_blend_of_a_member_rewritten_since_is_refused(demo, tmp_path):
    from segfold.blend import BlendView, align, write_blend

    members = [make_cfg(demo, tmp_path, name=name) for name in ("a", "b")]
    for seed, cfg in enumerate(members):
        for fold in (0, 1):
            save_best(cfg, fold, seed=seed)
            write_fold_oof(cfg, fold, seed=seed)
    views = {cfg.experiment.name: open_oof(cfg.experiment.output_dir) for cfg in members}
    blend_dir = tmp_path / "blend_ab"
    write_blend(BlendView(list(views.values()), align(views), [0.5, 0.5], "mean"), blend_dir / "oof", "oof")
    assert len(open_oof(blend_dir)) == 6
    write_fold_oof(members[1], 0, seed=9)  # member b's fold 0 OOF written again
    member = members[1].experiment.output_dir / "fold0" / "oof.json"
    with pytest.raises(StaleError, match=rf"blend_ab/oof/oof\.\* is stale: {member} was rewritten after it was made; "
                                         r"rerun scripts/blend\.py"):
        open_oof(blend_dir)
    assert isinstance(open_oof(blend_dir, allow_stale=True), StoreView)


def test_header_only_sample_submission_is_refused_and_the_old_submission_kept(demo, tmp_path):
    import shutil

    from segfold.predict import predict_test
    from segfold.submit import make_submission

    root = shutil.copytree(demo, tmp_path / "demo")
    cfg = make_cfg(root, tmp_path)
    save_best(cfg, 0)
    predict_test(cfg)
    make_submission(cfg)
    good = (cfg.experiment.output_dir / "submission.csv").read_text()
    assert len(good.splitlines()) == 1 + 2 * 4
    (root / "sample_submission.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(DataError, match=r"the sample submission has no rows, so the submission would have none"):
        make_submission(cfg)
    assert (cfg.experiment.output_dir / "submission.csv").read_text() == good
