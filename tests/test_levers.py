"""The training-side score levers: checkpoint averaging, stages, full-data fit, falling positive share, holdout."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from segfold.config import ConfigError, validate_config
from segfold.config.load import config_to_dict, stage_configs
from segfold.data.folds import holdout_ids, load_folds, write_folds
from segfold.data.formats import read_train
from segfold.data.pseudo import write_pseudo
from segfold.errors import DataError, TrainingError
from segfold.models import build_model
from segfold.probs import ProbStore, load_checkpoint, load_checkpoint_model, selected_checkpoint, store_exists
from segfold.runs import read_runs, record_run, settings_hash
from segfold.train import train
from segfold.train.average import average_state_dicts, recompute_batchnorm
from segfold.train.data import build_fold_data, split_fold
from segfold.train.distributed import DistInfo
from segfold.train.engine import Trainer
from segfold.train.loop import FoldRun
from test_train import tiny_config, tiny_data  # noqa: F401  (the module's data fixture)

# --------------------------------------------------------------------------------------- averaging


def test_average_state_dicts_means_floats_and_keeps_the_last_integers():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and int(out["n"]) == 7
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a, {"w": a["w"]}])


def test_batchnorm_statistics_are_recomputed_not_averaged():
    bn = nn.BatchNorm2d(2)
    first, second = bn.state_dict(), bn.state_dict()
    first = {k: v.clone() for k, v in first.items()}
    second = {k: v.clone() for k, v in second.items()}
    first["running_mean"], second["running_mean"] = torch.tensor([10.0, 10.0]), torch.tensor([30.0, 30.0])
    first["running_var"], second["running_var"] = torch.tensor([5.0, 5.0]), torch.tensor([7.0, 7.0])
    bn.load_state_dict(average_state_dicts([first, second]))
    assert bn.running_mean.tolist() == [20.0, 20.0]  # the stored mean of means, before recomputing

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 2, 4, 4, generator=generator) * 2 + 1, torch.randn(3, 2, 4, 4, generator=generator) - 4]
    bn.eval()
    assert recompute_batchnorm(bn, iter(batches)) == 2
    assert not bn.training  # the mode is restored
    # by hand: the running statistics are the averages of the per-batch mean and unbiased variance
    means = torch.stack([b.transpose(0, 1).reshape(2, -1).mean(dim=1) for b in batches]).mean(dim=0)
    variances = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=True) for b in batches]).mean(dim=0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert torch.allclose(bn.running_var, variances, atol=1e-5)
    assert not torch.allclose(bn.running_mean, torch.tensor([20.0, 20.0]))


def test_average_config_needs_the_matching_count():
    with pytest.raises(ConfigError, match="method 'swa' averages the last N epochs"):
        validate_config({"train": {"average": {"method": "swa", "k": 2}}})
    with pytest.raises(ConfigError, match="method 'top_k' averages the k best"):
        validate_config({"train": {"average": {"method": "top_k"}}})
    with pytest.raises(ConfigError, match="averages 5 checkpoints but train.epochs = 3"):
        validate_config({"train": {"epochs": 3, "average": {"method": "swa", "epochs": 5}}})


def _force_average_score(monkeypatch, score: float, epochs: int):
    """Make the validation after the last epoch (the averaged weights) report `score`."""
    real = FoldRun._evaluate
    calls = {"n": 0}

    def evaluate(self, model, epoch):
        calls["n"] += 1
        result = real(self, model, epoch)
        return {**result, "score": score} if calls["n"] > epochs else result

    monkeypatch.setattr(FoldRun, "_evaluate", evaluate)


def _one_oof_row_from(checkpoint, store_row, image_path):
    """The OOF row of one image equals the prediction of `checkpoint`'s weights (uint8 storage)."""
    model, _ = load_checkpoint_model(checkpoint, "cpu")
    pre = model.pretrained_cfg
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(image).float().permute(2, 0, 1) / 255 - torch.tensor(pre["mean"])[:, None, None])
    x = x / torch.tensor(pre["std"])[:, None, None]
    with torch.no_grad():
        probs = model(x[None]).sigmoid()[0].numpy()
    return float(np.abs(store_row - probs).max())


def test_swa_average_wins_is_kept_and_writes_the_oof(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    _force_average_score(monkeypatch, 2.0, epochs=3)
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 3, "average": {"method": "swa", "epochs": 2}})
    result = train(cfg, 0)
    fold_dir = tmp_path / "tiny" / "fold0"
    assert sorted(p.name for p in fold_dir.glob("swa_epoch*.pt")) == ["swa_epoch002.pt", "swa_epoch003.pt"]
    summary = json.loads((fold_dir / "average.json").read_text())
    assert summary["epochs"] == [2, 3] and summary["won"] is True and summary["bn_batches"] == 3
    assert result["checkpoint"] == "averaged.pt" and result["best_weights"] == "averaged"
    assert result["best_score"] == 2.0
    assert selected_checkpoint(fold_dir) == fold_dir / "averaged.pt"

    averaged = load_checkpoint(fold_dir / "averaged.pt")["model"]
    stored = [load_checkpoint(fold_dir / f"swa_epoch00{e}.pt")["model"] for e in (2, 3)]
    for key, value in averaged.items():
        if "running" in key or not value.is_floating_point():
            continue
        assert torch.allclose(value, (stored[0][key] + stored[1][key]) / 2, atol=1e-6), key
    bn_means = [k for k in averaged if k.endswith("running_mean")]
    assert bn_means and any(not torch.allclose(averaged[k], (stored[0][k] + stored[1][k]) / 2, atol=1e-4)
                            for k in bn_means)

    store = ProbStore.open(fold_dir, "oof")
    image = tiny_data / "train_images" / store.image_ids[0]
    assert _one_oof_row_from(fold_dir / "averaged.pt", store.read(0), image) <= 1 / 255 + 1e-3
    assert _one_oof_row_from(fold_dir / "best.pt", store.read(0), image) > 0.01  # not the best epoch's


def test_top_k_average_that_loses_leaves_best_pt(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    _force_average_score(monkeypatch, -1.0, epochs=3)
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 3, "average": {"method": "top_k", "k": 2},
                                                  "write_oof": False})
    result = train(cfg, 0)
    fold_dir = tmp_path / "tiny" / "fold0"
    rows = pd.read_csv(fold_dir / "metrics.csv")
    best_two = rows.sort_values(["score", "epoch"], ascending=[False, True])["epoch"].head(2).tolist()
    summary = json.loads((fold_dir / "average.json").read_text())
    assert sorted(summary["epochs"]) == sorted(best_two) and summary["won"] is False
    assert result["checkpoint"] == "best.pt" and not (fold_dir / "averaged.pt").exists()
    assert selected_checkpoint(fold_dir) == fold_dir / "best.pt"
    assert result["best_score"] == pytest.approx(rows["score"].max(), abs=1e-6)


def test_average_kept_always_is_used_even_when_it_loses(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    _force_average_score(monkeypatch, -1.0, epochs=3)
    cfg = tiny_config(tiny_data, tmp_path, train={"epochs": 3, "write_oof": False,
                                                  "average": {"method": "swa", "epochs": 2, "keep": "always"}})
    result = train(cfg, 0)
    fold_dir = tmp_path / "tiny" / "fold0"
    summary = json.loads((fold_dir / "average.json").read_text())
    assert summary["won"] is False and summary["used"] is True and summary["epochs"] == [2, 3]
    assert result["checkpoint"] == "averaged.pt" and (fold_dir / "averaged.pt").is_file()
    assert selected_checkpoint(fold_dir) == fold_dir / "averaged.pt"
    assert result["best_score"] == -1.0 and result["best_weights"] == "averaged"  # the score of the file used


# ---------------------------------------------------------------------------------- falling share


def test_positive_share_falls_linearly_over_the_epochs(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path, data={"sampler": {"positive_share": {"start": 1.0, "end": 0.5}}},
                      train={"epochs": 3})
    assert [cfg.data.sampler.share_at(e, 3) for e in (1, 2, 3)] == [1.0, 0.75, 0.5]
    info = DistInfo()
    data = build_fold_data(cfg, 0, info, [0.5] * 3, [0.25] * 3)
    # the demo data is mostly positive; make half the images empty so both pools exist
    sampler = data.train_sampler
    presence = np.zeros(len(data.train_ids), dtype=bool)
    presence[::2] = True
    sampler.positives, sampler.negatives = np.flatnonzero(presence), np.flatnonzero(~presence)
    for epoch, wanted in ((1, [4, 4, 4]), (2, [3, 3, 3]), (3, [2, 2, 2])):  # round(share * 4) of each batch of 4
        data.set_epoch(cfg.experiment.seed, epoch, 0)
        order = np.array(list(iter(sampler))).reshape(-1, 4)
        assert presence[order].sum(axis=1).tolist() == wanted, epoch


# ------------------------------------------------------------------------------------------ holdout


def test_holdout_is_stratified_and_in_no_fold(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path, data={"folds": {"n_folds": 2, "holdout": 0.25}})
    folds = load_folds(cfg)
    held = holdout_ids(folds)
    assert len(held) == 6  # 24 images split into round(1 / 0.25) = 4 parts: one part is the holdout
    assert sorted(folds["fold"].unique()) == [-1, 0, 1]
    annotations = read_train(cfg.data)
    presence = annotations.presence
    rows = [annotations.index(i) for i in held]
    # stratified like the folds: each class is in the holdout about a quarter as often as overall
    for c in range(presence.shape[1]):
        assert abs(presence[rows, c].sum() - presence[:, c].sum() / 4) <= 1.0, c
    for fold in (0, 1):
        _, train_ids, valid_ids = split_fold(cfg, fold, DistInfo())
        assert not set(held) & (set(train_ids) | set(valid_ids))
        assert len(train_ids) + len(valid_ids) == 18

    no_holdout = tiny_config(tiny_data, tmp_path, data={"folds": {"n_folds": 2}})
    with pytest.raises(DataError, match=r"has folds \[-1, 0, 1\] but data.folds.n_folds is 2 without holdout"):
        load_folds(no_holdout)
    write_folds(no_holdout, folds[folds["fold"] >= 0])
    with pytest.raises(DataError, match=r"with a holdout \(fold -1\)"):
        load_folds(cfg)


# ------------------------------------------------------------------------------------------- stages

STAGES = [
    {"train": {"epochs": 2, "freeze_encoder_epochs": 1}},
    # a learning rate so small that the second stage leaves the weights where the first stage's best put them
    {"train": {"epochs": 2}, "optim": {"lr": 1e-12, "weight_decay": 0.0}, "loss": {"terms": [{"name": "dice"}]}},
]


def test_stages_run_in_sequence_from_the_previous_best_and_resume_inside_a_stage(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path, stages=STAGES)
    first, second = stage_configs(cfg)
    assert (first.train.epochs, first.train.write_oof, first.optim.lr) == (2, False, 3e-3)
    assert (second.train.freeze_encoder_epochs, second.loss.terms[0].name, second.train.write_oof) == (0, "dice", True)

    class Killed(Exception):
        pass

    seen = []

    def kill_in_second_stage(epoch, metrics):
        seen.append(epoch)
        if epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, 0, epoch_callback=kill_in_second_stage)
    assert seen == [1, 2, 3]  # one epoch axis over the stages
    fold_dir = tmp_path / "tiny" / "fold0"
    stage1 = fold_dir / "stage1"
    assert load_checkpoint(fold_dir / "last.pt")["epoch"] == 1
    stage1_last = (stage1 / "last.pt").read_bytes()

    result = train(cfg, 0, resume=True)
    assert (stage1 / "last.pt").read_bytes() == stage1_last  # the finished stage is not trained again
    assert pd.read_csv(stage1 / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert pd.read_csv(fold_dir / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert not store_exists(stage1, "oof") and store_exists(fold_dir, "oof")  # the OOF of the final stage
    assert [s["fold_dir"] for s in result["stages"]] == [str(stage1), str(fold_dir)]
    assert json.loads((fold_dir / "result.json").read_text())["stages"][0]["best_epoch"] == result["stages"][0][
        "best_epoch"]

    from segfold.runs import read_runs

    rows = {r["stage"]: r for r in read_runs(tmp_path)}
    assert sorted(rows) == ["final", "stage1"]
    assert float(rows["stage1"]["fold0"]) == pytest.approx(result["stages"][0]["best_score"], abs=1e-6)
    assert float(rows["final"]["fold0"]) == pytest.approx(result["best_score"], abs=1e-6)
    assert rows["stage1"]["config_hash"] != rows["final"]["config_hash"]

    start = load_checkpoint(stage1 / "best.pt")["model"]
    end = load_checkpoint(fold_dir / "best.pt")["model"]
    weights = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in weights)
    torch.manual_seed(cfg.experiment.seed)
    fresh = build_model(cfg.model, 4).state_dict()
    assert any(not torch.allclose(fresh[k], end[k], atol=1e-3) for k in weights)


def test_a_stage_may_not_change_the_model_or_the_split():
    with pytest.raises(ConfigError, match=r"stages\[0\] overrides 'model'"):
        validate_config({"stages": [{"model": {"arch": "FPN"}}]})
    with pytest.raises(ConfigError, match=r"stages\[1\] overrides data.folds"):
        validate_config({"stages": [{}, {"data": {"folds": {"n_folds": 3}}}]})
    with pytest.raises(ConfigError, match=r"stages\[0\]: key 'train.epochs' = 0"):
        validate_config({"stages": [{"train": {"epochs": 0}}]})


def test_a_staged_run_checks_each_stage_before_training(tiny_data, tmp_path):  # noqa: F811
    bad_loss = [{}, {"loss": {"terms": [{"name": "lovasz_hinge"}]}}]
    with pytest.raises(ConfigError, match=r"stages\[1\] \(merged into the config\): loss.terms\[0\].name"):
        train(tiny_config(tiny_data, tmp_path, stages=bad_loss), 0)
    stage1 = tmp_path / "tiny" / "fold0" / "stage1"
    stage1.mkdir(parents=True)
    (stage1 / "best.pt").write_bytes(b"")  # an earlier stage's run: a fresh start must not go over it
    with pytest.raises(TrainingError, match=r"fold0/stage1 already holds a run of fold 0 .*--overwrite"):
        train(tiny_config(tiny_data, tmp_path, stages=STAGES), 0)
    assert not (tmp_path / "tiny" / "fold0" / "last.pt").exists()


# ------------------------------------------------------------------------------------------ full fit


def test_full_fit_trains_every_image_for_the_median_best_epoch(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path, data={"folds": {"n_folds": 3, "holdout": 0.25}})
    with pytest.raises(ConfigError, match="no .*fold<k>/result.json exists: train the folds first"):
        train(cfg, "full")
    for fold, best in ((0, 1), (1, 3), (2, 2)):  # what three trained folds leave behind
        (tmp_path / "tiny" / f"fold{fold}").mkdir(parents=True)
        (tmp_path / "tiny" / f"fold{fold}" / "result.json").write_text(json.dumps({"best_epoch": best}))
    result = train(cfg, "full")
    full = tmp_path / "tiny" / "full"
    assert result["epochs_run"] == 2 and result["best_epoch"] == 2  # median of 1, 3, 2
    assert pd.read_csv(full / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert load_checkpoint(full / "best.pt")["epoch"] == 2
    assert not store_exists(full, "oof") and result["oof"] is None
    info = json.loads((full / "run_info.json").read_text())
    assert (info["train_images"], info["valid_images"]) == (18, 0)  # 24 images less the 6 of the holdout

    settings = config_to_dict(cfg)
    settings["experiment"] = {"seed": cfg.experiment.seed}  # what a fold's row hashes
    with open(tmp_path / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    row = rows[0]
    assert (row["experiment"], row["stage"], row["config_hash"]) == ("tiny", "full", settings_hash(settings))
    assert (row["epochs"], row["epochs_from"]) == ("2", "median best epoch of folds [0, 1, 2] ([1, 3, 2])")
    assert row["cv_mean"] == row["cv_std"] == "" and not [key for key in row if key.startswith("fold")]

    configured = tiny_config(tiny_data, tmp_path, data={"folds": {"n_folds": 3, "holdout": 0.25}},
                             train={"full_epochs": 1})
    assert train(configured, "full", overwrite=True)["epochs_run"] == 1
    row = next(r for r in read_runs(tmp_path) if r["stage"] == "full")
    assert (row["epochs"], row["epochs_from"], row["cv_mean"]) == ("1", "train.full_epochs", "")
    assert row["config_hash"] != settings_hash(settings)  # train.full_epochs is a setting too


# ---------------------------------------------------------------------------------------- runs.csv


def test_runs_csv_rows_per_experiment_and_stage_and_log_lb(tmp_path, repo_root):
    assert settings_hash({"a": 1, "b": [1, 2]}) == settings_hash({"b": [1, 2], "a": 1}) != settings_hash({"a": 2})
    record_run(tmp_path, "exp", fold0=0.5, config_hash="abc")
    record_run(tmp_path, "exp", fold1=0.7)
    record_run(tmp_path, "exp", "stage1", fold0=0.4)
    record_run(tmp_path, "other", fold0=0.9, oof_before=0.8, oof_after=0.85, holdout=0.83)
    rows = {(r["experiment"], r["stage"]): r for r in read_runs(tmp_path)}
    final = rows[("exp", "final")]
    # mean and population std of 0.5 and 0.7, by hand: 0.6 and 0.1
    assert (final["fold0"], final["fold1"], final["cv_mean"], final["cv_std"]) == (
        "0.500000", "0.700000", "0.600000", "0.100000")
    assert final["config_hash"] == "abc" and rows[("exp", "stage1")]["cv_mean"] == "0.400000"
    header = (tmp_path / "runs.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["experiment", "stage", "config_hash", "fold0", "fold1"] and header[-1] == "updated"

    script = [sys.executable, str(repo_root / "scripts" / "log_lb.py")]
    done = subprocess.run([*script, "exp", "0.812", "--output-root", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cv_mean 0.600000" in done.stdout
    rows = {(r["experiment"], r["stage"]): r for r in read_runs(tmp_path)}
    assert rows[("exp", "final")]["public_lb"] == "0.812000" and rows[("exp", "stage1")]["public_lb"] == ""
    missing = subprocess.run([*script, "nope", "0.8", "--output-root", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 1
    assert "no row for experiment 'nope'" in missing.stderr and "exp (final)" in missing.stderr
    bad = subprocess.run([*script, "exp", "high", "--output-root", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "error: score 'high' is not a number" in bad.stderr


# -------------------------------------------------------------------------------------- pseudo-labels


def test_pseudo_images_join_training_batches_and_never_a_validation_batch(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    pseudo_ids = ["test_0000.jpg", "test_0001.jpg"]
    masks = np.zeros((4, 128, 256), dtype=np.uint8)
    masks[1, 10:40, 20:90] = 1
    folder = tmp_path / "pseudo"
    write_pseudo(folder, validate_config({"data": {"root": str(tiny_data)}}).data,
                 [("test_0000.jpg", masks), ("test_0001.jpg", masks * 0)], {"rule": "by hand"})
    cfg = tiny_config(tiny_data, tmp_path, data={"pseudo": {"path": str(folder), "share": 0.25}},
                      train={"epochs": 2})

    seen = {"train": [], "no_grad": []}
    to_device = Trainer.to_device

    def recording(self, batch):
        seen["train" if torch.is_grad_enabled() else "no_grad"].append(list(batch["image_id"]))
        return to_device(self, batch)

    monkeypatch.setattr(Trainer, "to_device", recording)
    train(cfg, 0)
    # 12 real training images, batches of 4 with round(0.25 * 4) = 1 pseudo image: ceil(12 / 3) = 4 batches
    assert len(seen["train"]) == 2 * 4
    assert all(sum(i in pseudo_ids for i in batch) == 1 for batch in seen["train"])
    assert not any(i in pseudo_ids for batch in seen["no_grad"] for i in batch)  # validation and OOF
    folds = pd.read_csv(tmp_path / "tiny" / "folds.csv")
    assert not set(pseudo_ids) & set(folds["ImageId"])
    store = ProbStore.open(tmp_path / "tiny" / "fold0", "oof")
    assert store.image_ids == folds.loc[folds["fold"] == 0, "ImageId"].tolist()
