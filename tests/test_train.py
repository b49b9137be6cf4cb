"""Training: config sections, optimizer groups, schedules, checkpoints, run records, and the loop end to end."""

from __future__ import annotations

import csv
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from segfold.config import ConfigError, validate_config
from segfold.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segfold.train.config import OptimConfig, SchedulerConfig
from segfold.train.optim import build_optimizer, param_groups
from segfold.train.runlog import MetricsLogger, write_run_info
from segfold.train.schedule import LrSchedule


class _Tiny(nn.Module):
    """encoder = conv(3->4, 3x3) + BN(4); head = conv(4->1, 1x1)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 1, 1)


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"train": {"epochs": 2, "freeze_encoder_epochs": 2}}, "freeze_encoder_epochs = 2 must be smaller"),
        ({"optim": {"name": "adam", "nesterov": True}}, "nesterov=true needs optim.name=sgd"),
        ({"scheduler": {"name": "onecycle", "warmup_epochs": 1}}, "not supported with scheduler.name=onecycle"),
        ({"optim": {"name": "adagrad"}}, r"key 'optim.name' = 'adagrad'.*'adamw', 'adam', 'sgd', 'radam' or 'lion'"),
        ({"train": {"batch_size": 0}}, r"key 'train.batch_size' = 0: Input should be greater than or equal to 1"),
        ({"loss": {"terms": []}}, r"key 'loss.terms'"),
        ({"train": {"precision": "fp8"}}, r"'fp32', 'fp16' or 'bf16'"),
        ({"train": {"epoch": 3}}, r"unknown key 'train.epoch'; did you mean 'train.epochs'"),
    ],
)
def test_bad_training_sections_are_named(section, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(section)


def test_loss_terms_parse():
    terms = [{"name": "bce", "weight": 0.3}, {"name": "dice", "params": {"smooth": 1}}]
    cfg = validate_config({"loss": {"terms": terms}})
    assert [(t.name, t.weight, t.params) for t in cfg.loss.terms] == [("bce", 0.3, {}), ("dice", 1.0, {"smooth": 1})]


# ---------------------------------------------------------------------------------------- optimizer


def test_param_groups_split_encoder_and_no_decay():
    model = _Tiny()
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=0.1, encoder_lr_mult=0.1, weight_decay=0.01))}
    enc_conv, enc_bn = model.encoder[0], model.encoder[1]
    assert [id(p) for p in groups["encoder"]["params"]] == [id(enc_conv.weight)]
    no_decay = {id(enc_conv.bias), id(enc_bn.weight), id(enc_bn.bias)}
    assert {id(p) for p in groups["encoder_no_decay"]["params"]} == no_decay
    assert [id(p) for p in groups["decoder"]["params"]] == [id(model.head.weight)]
    assert [id(p) for p in groups["decoder_no_decay"]["params"]] == [id(model.head.bias)]
    # 0.1 * 0.1 = 0.01 for the encoder; decay 0.01 only on the two conv weights
    assert groups["encoder"]["lr"] == pytest.approx(0.01)
    assert groups["decoder"]["lr"] == pytest.approx(0.1)
    assert [groups[n]["weight_decay"] for n in ("encoder", "encoder_no_decay", "decoder", "decoder_no_decay")] == [
        0.01, 0.0, 0.01, 0.0,
    ]


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "radam", "lion"])
def test_every_optimizer_steps(name):
    model = _Tiny()
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=0.01))
    before = model.head.weight.detach().clone()
    model.head(model.encoder(torch.randn(2, 3, 6, 6))).pow(2).mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.head.weight)


# ----------------------------------------------------------------------------------------- schedules


def _run_schedule(cfg: SchedulerConfig, steps_per_epoch: int, epochs: int, metrics=None, mult: float = 0.5):
    model = _Tiny()
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=1.0, encoder_lr_mult=mult, momentum=0.0))
    schedule = LrSchedule(optimizer, cfg, OptimConfig(name="sgd", lr=1.0), steps_per_epoch, epochs)
    decoder = next(g for g in optimizer.param_groups if g["name"] == "decoder")
    encoder = next(g for g in optimizer.param_groups if g["name"] == "encoder")
    lrs, enc = [decoder["lr"]], [encoder["lr"]]
    step = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            optimizer.step()
            step += 1
            schedule.step_update(step)
            lrs.append(decoder["lr"])
            enc.append(encoder["lr"])
        schedule.step_epoch(epoch, None if metrics is None else metrics[epoch])
    return lrs, enc


def test_cosine_with_linear_warmup():
    # 10 steps, warm-up 0.4 epoch * 5 steps = 2 steps from 0.1 to 1.0, then cosine over 8 steps to 0.
    lrs, enc = _run_schedule(SchedulerConfig(name="cosine", warmup_epochs=0.4, warmup_lr_ratio=0.1, min_lr_ratio=0.0),
                             steps_per_epoch=5, epochs=2)
    expected = [0.1, 0.55] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    assert lrs == pytest.approx(expected, abs=1e-9)
    assert enc == pytest.approx([0.5 * v for v in expected], abs=1e-9)  # encoder multiplier 0.5 kept throughout


def test_poly_decay():
    # no warm-up, T = 4 steps: lr(t) = lr_min + (lr - lr_min) * (1 - t / T) ** power = 0.1 + 0.9 * (1 - t / 4) ** 2
    lrs, _ = _run_schedule(SchedulerConfig(name="poly", poly_power=2.0, min_lr_ratio=0.1), steps_per_epoch=2, epochs=2)
    assert lrs == pytest.approx([0.1 + 0.9 * (1 - t / 4) ** 2 for t in range(5)], abs=1e-9)


def test_onecycle_rises_then_falls():
    # total 10 steps, pct_start 0.3: starts at 1/25, peaks at 1.0 after 3 steps, ends at 1/25/1e4
    lrs, _ = _run_schedule(SchedulerConfig(name="onecycle", onecycle_pct_start=0.3, onecycle_div_factor=25.0),
                           steps_per_epoch=5, epochs=2)
    assert lrs[0] == pytest.approx(1 / 25)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) in (2, 3)
    assert lrs[9] == pytest.approx(1 / 25 / 1e4, rel=1e-6)


def test_plateau_halves_after_patience():
    # mode max, patience 0: epoch 0 sets the best (0.5); epoch 1 (0.4) is worse -> lr 1.0 -> 0.5
    lrs, _ = _run_schedule(SchedulerConfig(name="plateau", plateau_factor=0.5, plateau_patience=0),
                           steps_per_epoch=2, epochs=3, metrics=[0.5, 0.4, 0.6])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])


# ----------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_weights_only_with_every_state(tmp_path):
    model = _Tiny()
    optimizer = build_optimizer(model, OptimConfig(lr=0.1))
    schedule = LrSchedule(optimizer, SchedulerConfig(name="cosine", warmup_epochs=1), OptimConfig(lr=0.1), 3, 2)
    model.head(model.encoder(torch.randn(2, 3, 6, 6))).mean().backward()
    optimizer.step()
    schedule.step_update(1)
    state = {"model": model.state_dict(), "config": {"train": {"epochs": 2}}, "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "rng": rng_state(), "epoch": 1, "score": 0.5}
    save_checkpoint(tmp_path / "last.pt", state)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file was renamed away
    torch.load(tmp_path / "last.pt", weights_only=True)  # the promise: loads without unpickling code
    loaded = load_checkpoint(tmp_path / "last.pt")
    fresh = build_optimizer(model, OptimConfig(lr=0.1))
    fresh.load_state_dict(loaded["optimizer"])
    restored = LrSchedule(fresh, SchedulerConfig(name="cosine", warmup_epochs=1), OptimConfig(lr=0.1), 3, 2)
    restored.load_state_dict(loaded["schedule"])
    restored.step_update(2)
    schedule.step_update(2)
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_rng_state_restores_python_numpy_torch(tmp_path):
    save_checkpoint(tmp_path / "rng.pt", {"model": {}, "config": {}, "rng": rng_state()})
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_missing_or_foreign_checkpoint_is_a_training_error(tmp_path):
    from segfold.errors import TrainingError

    with pytest.raises(TrainingError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="expected the keys 'model' and 'config'"):
        load_checkpoint(tmp_path / "other.pt")


# ---------------------------------------------------------------------------------------- run records


def test_metrics_logger_resume_drops_later_rows(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for epoch, loss in ((1, 0.9), (2, 0.7), (3, 0.6)):
        logger.log_epoch({"epoch": epoch, "train_loss": loss, "score": loss / 3})
    logger.close()
    resumed = MetricsLogger(tmp_path, start_epoch=3, tensorboard=False)  # epoch 3 is trained again
    resumed.log_epoch({"epoch": 3, "train_loss": 0.5, "score": 0.25})
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], float(r["train_loss"])) for r in rows] == [("1", 0.9), ("2", 0.7), ("3", 0.5)]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_info_names_commit_and_versions(tmp_path):
    info = write_run_info(tmp_path / "run_info.json", {"fold": 0})
    assert info["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["fold"] == 0 and "git_commit" in info
