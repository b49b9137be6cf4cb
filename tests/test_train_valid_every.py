"""`train.valid_every`: validation, best.pt, top-k, patience, the plateau schedule and resume on every N-th epoch."""

from __future__ import annotations

import csv
import logging
import math

import pandas as pd
import pytest
import torch

from segfold.config import ConfigError, validate_config
from segfold.config.train import TrainConfig
from segfold.probs import load_checkpoint
from segfold.train import loop, train
from segfold.train.runlog import MetricsLogger, curve
from segfold.train.schedule import LrSchedule
from segfold.train.stages import full_fit_configs
from test_train import _state_tensors, tiny_config, tiny_data  # noqa: F401  (tiny_data is a fixture)


def test_validated_epochs_are_every_nth_and_the_last():
    # by hand: 3 and 6 are multiples of 3, 7 is the last epoch
    config = TrainConfig(epochs=7, valid_every=3)
    assert [e for e in range(1, 8) if config.validates(e)] == [3, 6, 7] and config.validations == 3
    assert TrainConfig(epochs=4, valid_every=9).validations == 1  # only the last


def test_top_k_average_needs_as_many_validations():
    # epochs 5, valid_every 2: epochs 2, 4, 5 validate, so three top-k files at most
    validate_config({"train": {"epochs": 5, "valid_every": 2, "average": {"method": "top_k", "k": 3}}})
    with pytest.raises(ConfigError, match=r"4 best validated checkpoints .*train.valid_every = 2 validates 3 epoch"):
        validate_config({"train": {"epochs": 5, "valid_every": 2, "average": {"method": "top_k", "k": 4}}})
    # SWA averages every epoch's weights, validated or not
    validate_config({"train": {"epochs": 5, "valid_every": 5, "average": {"method": "swa", "epochs": 4}}})


def test_full_fit_validates_every_epoch_whatever_the_folds_did(tmp_path):
    cfg = validate_config({"experiment": {"output_root": str(tmp_path)},
                           "train": {"epochs": 4, "valid_every": 3, "full_epochs": 2}})
    (fitted,), _ = full_fit_configs([cfg])
    assert (fitted.train.epochs, fitted.train.valid_every) == (2, 1)


def test_only_every_nth_and_the_last_epoch_validate(tiny_data, tmp_path, monkeypatch, caplog):  # noqa: F811
    evaluated_at, stepped = [], []
    real_evaluate, real_step = loop.evaluate, LrSchedule.step_epoch

    def counting_evaluate(model, loader, objective, score, trainer):
        evaluated_at.append(trainer.global_step)  # 3 optimizer steps per epoch: the epoch that validates
        return real_evaluate(model, loader, objective, score, trainer)

    def recording_step(self, epoch, metric):
        stepped.append((epoch, metric))
        real_step(self, epoch, metric)

    monkeypatch.setattr(loop, "evaluate", counting_evaluate)
    monkeypatch.setattr(LrSchedule, "step_epoch", recording_step)
    cfg = tiny_config(tiny_data, tmp_path, scheduler={"name": "plateau", "plateau_patience": 0},
                      train={"epochs": 3, "valid_every": 2, "ema": True, "save_top_k": 2})
    called = []
    with caplog.at_level(logging.INFO, logger="segfold.train.loop"):
        result = train(cfg, 0, epoch_callback=lambda epoch, metrics: called.append((epoch, metrics["score"])))
    fold_dir = tmp_path / "tiny" / "fold0"

    steps = load_checkpoint(fold_dir / "last.pt")["global_step"] // 3
    assert evaluated_at == [2 * steps, 2 * steps, 3 * steps, 3 * steps]  # the model and its EMA, epochs 2 and 3
    assert [epoch for epoch, _ in stepped] == [2, 3] and all(math.isfinite(v) for _, v in stepped)
    assert [epoch for epoch, _ in called] == [2, 3] and all(math.isfinite(s) for _, s in called)

    # one row per epoch; epoch 1's validation cells are empty
    with (fold_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for key in ("valid_loss", "score", "ema_valid_loss", "ema_score"):
        assert rows[0][key] == "" and all(math.isfinite(float(row[key])) for row in rows[1:]), key
    frame = pd.read_csv(fold_dir / "metrics.csv")
    assert frame["score"].isna().tolist() == [True, False, False]
    assert curve(rows, "score") == ([2, 3], [float(rows[1]["score"]), float(rows[2]["score"])])
    assert curve(rows, "train_loss")[0] == [1, 2, 3]
    assert (fold_dir / "curves.png").is_file()

    # best.pt and the top-k files come from validated epochs only
    assert result["best_epoch"] in (2, 3) and load_checkpoint(fold_dir / "best.pt")["epoch"] == result["best_epoch"]
    assert sorted(p.name for p in fold_dir.glob("epoch*.pt")) == ["epoch002.pt", "epoch003.pt"]
    best_row = max(rows[1:], key=lambda row: max(float(row["score"]), float(row["ema_score"])))
    assert result["best_score"] == pytest.approx(max(float(best_row["score"]), float(best_row["ema_score"])),
                                                 abs=1e-5)

    # TensorBoard holds no point for the unvalidated epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fold_dir / "tensorboard"))
    events.Reload()
    assert [point.step for point in events.Scalars("epoch/score")] == [2, 3]
    assert [point.step for point in events.Scalars("epoch/train_loss")] == [1, 2, 3]

    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage() and "train_loss" in r.getMessage()]
    assert len(lines) == 3
    assert "not validated (train.valid_every: 2)" in lines[0] and "nan" not in lines[0] and " best " not in lines[0]
    assert "score " in lines[1] and "best " in lines[1]


def test_patience_counts_validations_not_epochs(tiny_data, tmp_path):  # noqa: F811
    # the first validation (epoch 2) is the best; no later one beats it by min_delta; patience 1 stops at the
    # next validation, epoch 4 (counting epochs it would stop at the unvalidated epoch 3)
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 6, "valid_every": 2, "patience": 1, "min_delta": 10.0,
                                                  "write_oof": False})
    result = train(cfg, 0)
    assert (result["epochs_run"], result["stopped_early"], result["best_epoch"]) == (4, True, 2)
    assert pd.read_csv(tmp_path / "tiny" / "fold0" / "metrics.csv")["epoch"].tolist() == [1, 2, 3, 4]


def test_resume_from_an_unvalidated_epoch_ends_like_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    sections = dict(train={"epochs": 3, "valid_every": 2, "ema": True, "ema_decay": 0.7, "deterministic": True,
                           "write_oof": False})
    whole = train(tiny_config(tiny_data, tmp_path / "whole", **sections), 0)

    class Killed(Exception):
        pass

    log_epoch = MetricsLogger.log_epoch

    def kill_after_first(self, metrics):
        log_epoch(self, metrics)
        if metrics["epoch"] == 1:  # last.pt of epoch 1 is written; nothing validated yet
            raise Killed

    cut_cfg = tiny_config(tiny_data, tmp_path / "cut", **sections)
    with monkeypatch.context() as patch:
        patch.setattr(MetricsLogger, "log_epoch", kill_after_first)
        with pytest.raises(Killed):
            train(cut_cfg, 0)
    cut = tmp_path / "cut" / "tiny" / "fold0"
    assert load_checkpoint(cut / "last.pt")["epoch"] == 1 and not (cut / "best.pt").exists()
    resumed = train(cut_cfg, 0, resume=True)
    assert (resumed["best_score"], resumed["best_epoch"]) == (whole["best_score"], whole["best_epoch"])
    a = load_checkpoint(tmp_path / "whole" / "tiny" / "fold0" / "last.pt")
    b = load_checkpoint(cut / "last.pt")
    for part in ("model", "ema", "optimizer"):
        ta, tb = _state_tensors(a[part]), _state_tensors(b[part])
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{part}.{key} differs after resume"
    assert pd.read_csv(cut / "metrics.csv")["score"].isna().tolist() == [True, False, False]
