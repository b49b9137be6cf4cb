"""`train.steps`: an iteration budget per fold, turned into epochs from each fold's own training loader."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from segfold.config import ConfigError, validate_config
from segfold.data.folds import load_folds
from segfold.probs import load_checkpoint
from segfold.search import hparams
from segfold.train import loop, train
from segfold.train.distributed import init_distributed
from segfold.train.schedule import LrSchedule
from segfold.train.stages import FULL, full_fit_configs, steps_config
from test_train import assert_same_last_checkpoints, killed_and_resumed, tiny_config, tiny_data  # noqa: F401  (tiny_data is a fixture)


@pytest.mark.parametrize(("steps", "batches", "accumulate", "epochs", "per_epoch"), [
    (450, 21, 1, 21, 21),  # 450 / 21 = 21.4
    (450, 21, 2, 41, 11),  # ceil(21 / 2) = 11 optimizer steps; 450 / 11 = 40.9
    (5, 4, 2, 3, 2),       # 5 / 2 = 2.5: halves round up
    (3, 100, 1, 1, 100),   # 0.03 rounds to 0: at least one epoch
])
def test_epochs_by_hand(steps, batches, accumulate, epochs, per_epoch):
    cfg = validate_config({"train": {"steps": steps, "accumulate_steps": accumulate, "epochs": 7}})
    derived, record = steps_config(cfg, "fold 0", batches)
    assert (derived.train.epochs, derived.train.steps) == (epochs, None)
    assert record == {"steps": steps, "epochs": epochs, "batches_per_epoch": batches, "optimizer_steps_per_epoch":
                      per_epoch}
    assert steps_config(validate_config({"train": {"epochs": 7}}), "fold 0", batches) == (
        validate_config({"train": {"epochs": 7}}), None)


def test_epochs_is_ignored_with_steps_and_conflicts_are_checked_on_the_derived_count():
    # freeze 4 epochs with the default 3 epochs is an error, but with steps the epochs are not known yet
    with pytest.raises(ConfigError, match="freeze_encoder_epochs"):
        validate_config({"train": {"freeze_encoder_epochs": 4}})
    cfg = validate_config({"train": {"steps": 50, "freeze_encoder_epochs": 4}, "scheduler": {"warmup_epochs": 4}})
    derived, _ = steps_config(cfg, "fold 1", 10)  # 5 epochs: both fit
    assert derived.train.epochs == 5
    # 40 / 10 = 4 epochs: the encoder would never train
    with pytest.raises(ConfigError, match=r"fold 1: train\.steps = 40 derives 4 epoch.*freeze_encoder_epochs = 4"):
        steps_config(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 40})}), "fold 1", 10)
    # the cross-section check (warm-up) runs on the derived count too
    cfg = validate_config({"train": {"steps": 40}, "scheduler": {"warmup_epochs": 4}})
    with pytest.raises(ConfigError, match=r"train\.steps = 40 derives 4 epoch.*scheduler\.warmup_epochs = 4"):
        steps_config(cfg, "fold 0", 10)
    cfg = validate_config({"train": {"steps": 20, "average": {"method": "swa", "epochs": 3}}})
    with pytest.raises(ConfigError, match=r"train\.steps = 20 derives 2 epoch.*averages 3 checkpoints"):
        steps_config(cfg, "full", 10)


def _unbalanced(cfg):
    """Fold 0 holds 4 of the 24 images (its model trains on 20), fold 1 holds 20 (its model trains on 4)."""
    folds = load_folds(cfg)
    ids = folds["ImageId"].tolist()
    pd.DataFrame({"ImageId": ids, "fold": [0] * 4 + [1] * 20}).to_csv(cfg.experiment.output_dir / "folds.csv",
                                                                   index=False)


@pytest.mark.slow
def test_unbalanced_folds_train_the_same_optimizer_steps(tiny_data, tmp_path, monkeypatch, caplog):  # noqa: F811
    schedules = []

    class RecordingSchedule(LrSchedule):
        def __init__(self, optimizer, cfg, optim_cfg, steps_per_epoch, epochs, maximize=True):
            schedules.append(steps_per_epoch * epochs)
            super().__init__(optimizer, cfg, optim_cfg, steps_per_epoch, epochs, maximize)

    monkeypatch.setattr(loop, "LrSchedule", RecordingSchedule)
    # batch 4: fold 0 trains on 5 batches = ceil(5 / 2) = 3 optimizer steps per epoch, 6 / 3 = 2 epochs
    # (without the accumulation it would be 6 / 5 -> 1); fold 1 on 1 batch = 1 step per epoch: 6 epochs
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 9, "steps": 6, "accumulate_steps": 2,
                                                  "write_oof": False, "valid_every": 6})
    _unbalanced(cfg)
    with caplog.at_level(logging.INFO, logger="segfold.train.loop"):
        results = [train(cfg, fold) for fold in (0, 1)]
    assert [(r["epochs"], r["epochs_run"]) for r in results] == [(2, 2), (6, 6)]
    assert schedules == [2 * 3, 6 * 1]
    assert "fold 0: train.steps 6 -> 2 epochs of 5 batches (3 optimizer steps each)" in caplog.text
    assert "fold 1: train.steps 6 -> 6 epochs of 1 batches (1 optimizer steps each)" in caplog.text
    for fold, (epochs, batches, per_epoch) in enumerate([(2, 5, 3), (6, 1, 1)]):
        fold_dir = tmp_path / "tiny" / f"fold{fold}"
        record = {"steps": 6, "epochs": epochs, "batches_per_epoch": batches, "optimizer_steps_per_epoch": per_epoch}
        assert json.loads((fold_dir / "result.json").read_text())["epochs_from_steps"] == record
        info = json.loads((fold_dir / "run_info.json").read_text())
        assert (info["epochs"], info["epochs_from_steps"]) == (epochs, record)
        last = load_checkpoint(fold_dir / "last.pt")
        assert last["global_step"] == epochs * per_epoch  # the optimizer really stepped that often
        assert (last["config"]["train"]["epochs"], last["config"]["train"]["steps"]) == (epochs, None)


def test_falling_share_spans_the_derived_epochs(tiny_data, tmp_path):  # noqa: F811
    # 12 training images of 4: 3 batches; 13 / 3 = 4.3 -> 4 epochs (train.epochs 2 is ignored)
    cfg = tiny_config(tiny_data, tmp_path, data={"sampler": {"positive_share": {"start": 0.9, "end": 0.3}}},
                      train={"steps": 13})
    run = loop.FoldRun(cfg, 0, init_distributed("cpu"))
    assert run.cfg.train.epochs == 4
    assert [round(run.data.share_at(e), 6) for e in (1, 2, 4)] == [0.9, 0.7, 0.3]


@pytest.mark.slow
def test_resume_with_steps_ends_with_the_same_weights(tiny_data, tmp_path):  # noqa: F811
    sections = dict(train={"steps": 7, "epochs": 1, "deterministic": True}, scheduler={"name": "cosine"},
                    data={"sampler": {"positive_share": {"start": 0.9, "end": 0.3}}})
    whole, resumed, _ = killed_and_resumed(tiny_data, tmp_path, **sections)  # 7 / 3 -> 2 epochs
    assert whole["epochs"] == resumed["epochs"] == resumed["epochs_run"] == 2
    a, b = assert_same_last_checkpoints(tmp_path, ("model", "optimizer"))
    assert a["global_step"] == b["global_step"] == 6


def test_stages_derive_their_own_epochs_on_one_epoch_axis(tiny_data, tmp_path):  # noqa: F811
    # 3 batches per epoch: stage 1 trains 3 / 3 = 1 epoch, stage 2 7 / 3 -> 2 epochs
    cfg = tiny_config(tiny_data, tmp_path, train={"steps": 3, "write_oof": False},
                      stages=[{}, {"train": {"steps": 7}, "optim": {"lr": 1e-3}}])
    called = []
    result = train(cfg, 0, epoch_callback=lambda epoch, metrics: called.append(epoch))
    assert [s["epochs"] for s in result["stages"]] == [1, 2]
    assert called == [1, 2, 3]  # the second stage's epochs follow the first's derived count


def test_full_fit_derives_from_its_own_loader_unless_full_epochs_is_set(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path, train={"steps": 13, "epochs": 9})
    (fitted,), sources = full_fit_configs([cfg])  # no fold result needed
    assert (fitted.train.steps, sources) == (13, ["train.steps 13"])
    result = train(cfg, FULL)  # every one of the 24 images: 6 batches, 13 / 6 = 2.2 -> 2 epochs
    assert (result["epochs"], result["epochs_run"]) == (2, 2)
    assert json.loads((tmp_path / "tiny" / "full" / "run_info.json").read_text())["epochs_from_steps"][
        "batches_per_epoch"] == 6
    with_full = tiny_config(tiny_data, tmp_path, train={"steps": 13, "full_epochs": 5})
    (fitted,), sources = full_fit_configs([with_full])
    assert (fitted.train.epochs, fitted.train.steps, sources) == (5, None, ["train.full_epochs"])


def test_search_epochs_shortens_a_trial_over_steps(tmp_path):
    calls = []

    def recording_train(cfg, fold, epoch_callback=None):
        calls.append((cfg.train.epochs, cfg.train.steps))
        return {"best_score": 0.5}

    space = {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    data = {"experiment": {"name": "s", "output_root": str(tmp_path / "out")}, "train": {"steps": 500},
            "search": {"trials": 1, "epochs": 2, "space": space, "pruner": "hyperband"}}
    hparams.run_search(validate_config(data), train_fn=recording_train)
    assert calls == [(2, None)]
    data["search"].update(epochs=None)
    data["experiment"]["name"] = "t"
    hparams.run_search(validate_config(data), train_fn=recording_train)  # the budget stays; hyperband: auto
    assert calls[1][1] == 500
