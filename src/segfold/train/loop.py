"""The training loop of one fold (`train`) and of several in a row (`train_folds`).

Per epoch: train (tqdm bar with loss, lr, images/s), keep `last.pt`, log one line and one `metrics.csv`
row. Every `train.valid_every`-th epoch and the last also validate the model and its EMA on the fold's
held-out images with the competition score, keep `best.pt` (and top-k), step a plateau schedule, call
`epoch_callback` and stop early when the monitored value stalls. After the last epoch the best weights
write the fold's out-of-fold probabilities (`oof.*`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from segfold.config.load import config_to_dict, save_config, stage_configs
from segfold.cores import apply_threads
from segfold.encoders import get_preprocessing_params
from segfold.errors import ConfigError, TrainingError
from segfold.io import ensure_dir, write_json_atomic
from segfold.models import build_model, unpack_outputs
from segfold.probs import (
    OOF_NAME,
    StoreWriter,
    batch_scores,
    batch_truth,
    checkpoint_entry,
    checkpoint_model,
    load_checkpoint,
    new_record,
    probabilities,
    resize_probs,
)
from segfold.runs import full_stage_name, record_run, settings_hash, stage_name
from segfold.train import average as avg
from segfold.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from segfold.train.checks import check_training_config
from segfold.train.data import FoldData, build_fold_data
from segfold.train.distributed import DistInfo, barrier, broadcast_object, init_distributed
from segfold.train.engine import Trainer, evaluate, resolve_precision
from segfold.train.objective import TrainingObjective
from segfold.train.optim import build_optimizer, current_lr
from segfold.train.rundir import check_fold_dir, prepare_fold_dir
from segfold.train.runlog import MetricsLogger, write_run_info
from segfold.train.schedule import LrSchedule
from segfold.train.stages import FULL, full_fit_configs, shifted_callback, steps_config
from segfold.train.tracking import BestTracker, remove_files

EpochCallback = Callable[[int, dict[str, Any]], None]

logger = logging.getLogger(__name__)  # lines of ranks other than 0 are dropped by segfold.logs

NOT_VALIDATED = {"valid_loss": math.nan, "score": math.nan}  # the results of an epoch without validation


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, warn_only: bool = False) -> Iterator[None]:
    """`torch.use_deterministic_algorithms` for the duration of a run (restored afterwards).

    Args:
        enabled: off means nothing changes.
        warn_only: warn instead of failing at ops without a deterministic kernel (some CUDA backward
            passes, e.g. bilinear upsampling, have none); on CPU every op the models use has one.
    """
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark = benchmark


def train(cfg: Any, fold: int, resume: bool = False, epoch_callback: EpochCallback | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Train one fold and write its outputs to `outputs/<experiment>/fold<fold>/`.

    Args:
        cfg: the validated experiment config.
        fold: the held-out fold (validation images).
        resume: continue from `last.pt` (model, optimizer, schedule, scaler, EMA, sampler, RNG, epoch).
        epoch_callback: `(epoch, metrics) -> None`, on rank 0 after each validation; it may raise to
            stop the run (Optuna pruning), after `last.pt` of that epoch is written.
        overwrite: start again over a fold that already holds a run; the old folder is moved to
            `<experiment>/replaced/fold<k>-<time>/` first (without it, such a fold is an error).

    Returns:
        `best_score`, `best_epoch`, `best_weights` ("model" or "ema"), `epochs_run`, `stopped_early`,
        `fold_dir`, `best_checkpoint`, `oof` (folder of `oof.*` or None), `fold`.

    Raises:
        TrainingError: a NaN / infinite loss (epoch and step named; the last good checkpoint stays),
            a checkpoint that does not fit the config, or a fold that already holds a run (neither
            `resume` nor `overwrite`).
        ConfigError: config combinations the trainer cannot run.
    """
    info = init_distributed(cfg.train.device)
    configs = stage_configs(cfg)
    for index, stage_cfg in enumerate(configs):
        try:
            check_training_config(stage_cfg)
        except ConfigError as exc:
            raise ConfigError(f"stages[{index}] (merged into the config): {exc}" if len(configs) > 1 else str(exc)
                              ) from None
    settings = configs  # the stages as configured: a full fit's row in runs.csv shares the folds' config hash
    epoch_sources: list[str] = []
    if fold == FULL:
        configs, epoch_sources = full_fit_configs(configs)
    fold_dir = Path(cfg.experiment.output_dir) / (FULL if fold == FULL else f"fold{fold}")
    # a staged run's earlier stages (fold<k>/stage<s>/) count as a run too
    check_fold_dir(fold_dir, fold, resume, overwrite, inner=[f"stage{n}" for n in range(1, len(configs))])
    barrier(info)  # every rank has looked before rank 0 moves anything
    if info.is_main:
        moved = prepare_fold_dir(fold_dir, overwrite)  # the stage folders inside move with it
        if moved is not None:
            logger.info("%s: the old run was moved to %s", FULL if fold == FULL else f"fold {fold}", moved)
    barrier(info)
    results: list[dict[str, Any]] = []
    init, offset = None, 0
    for number, stage_cfg in enumerate(configs, 1):
        staged = len(configs) > 1
        folder = fold_dir / f"stage{number}" if number < len(configs) else fold_dir
        label = f"{FULL if fold == FULL else f'fold {fold}'}" + (f" stage {number}/{len(configs)}" if staged else "")
        callback = epoch_callback
        if epoch_callback is not None and offset:
            callback = functools.partial(shifted_callback, epoch_callback, offset)  # one epoch axis over the stages
        with deterministic_mode(stage_cfg.train.deterministic, warn_only=info.device.type == "cuda"):
            run = FoldRun(stage_cfg, fold, info, folder=folder, init_weights=init, label=label, resume=resume)
            result = run.fit(resume, callback)
        results.append(result)
        init, offset = folder / result["checkpoint"], offset + result["epochs"]
        if info.is_main and fold != FULL:
            record_run(cfg.experiment.output_root, cfg.experiment.name, stage_name(number, len(configs)),
                       config_hash=_settings_hash(settings[number - 1]), **{f"fold{fold}": result["best_score"]})
        elif info.is_main:  # no validation, so no score: the CV cells of the row stay empty
            record_run(cfg.experiment.output_root, cfg.experiment.name, full_stage_name(number, len(configs)),
                       config_hash=_settings_hash(settings[number - 1]), epochs=result["epochs_run"],
                       epochs_from=epoch_sources[number - 1])
    final = results[-1]
    if len(results) > 1:
        final["stages"] = [{key: r[key] for key in ("best_score", "best_epoch", "best_weights", "epochs",
                                                    "epochs_run", "fold_dir", "checkpoint")} for r in results]
        if info.is_main:
            write_json_atomic(fold_dir / "result.json", final)
    return final


def _settings_hash(cfg: Any) -> str:
    """The `config_hash` cell of `outputs/runs.csv`: the resolved settings without the experiment's name."""
    settings = config_to_dict(cfg)
    settings["experiment"] = {"seed": cfg.experiment.seed}  # the same settings under another name: same hash
    return settings_hash(settings)


def train_folds(cfg: Any, folds: Sequence[int], resume: bool = False, overwrite: bool = False) -> list[dict[str, Any]]:
    """Train `folds` one after another; writes `outputs/<experiment>/cv.json` with every fold's result."""
    inner = [f"stage{n}" for n in range(1, len(stage_configs(cfg)))]
    for fold in folds:  # refuse before the first fold trains
        check_fold_dir(Path(cfg.experiment.output_dir) / f"fold{fold}", fold, resume, overwrite, inner)
    results = [train(cfg, fold, resume=resume, overwrite=overwrite) for fold in folds]
    scores = [r["best_score"] for r in results]
    summary = {"folds": results, "mean_score": float(np.mean(scores)), "std_score": float(np.std(scores))}
    if init_distributed(cfg.train.device).is_main:
        write_json_atomic(Path(cfg.experiment.output_dir) / "cv.json", summary)
    logger.info("cv score over folds %s: %.4f +- %.4f", list(folds), summary["mean_score"], summary["std_score"])
    return results


def show_progress(wanted: bool, stream: Any = None) -> bool:
    """Whether to draw a progress bar: wanted, and the stream is a terminal.

    NOTE: written to a log file, a bar is one carriage-return update per batch; there the epoch's summary
    line (printed anyway) is the progress report.
    """
    stream = sys.stderr if stream is None else stream
    return wanted and hasattr(stream, "isatty") and stream.isatty()


class FoldRun:
    """Everything one fold's training holds: data, model, EMA, optimizer, schedule, tracker."""

    def __init__(self, cfg: Any, fold: int | str, info: DistInfo, folder: Path | None = None,
                 init_weights: Path | None = None, label: str | None = None, resume: bool = False) -> None:
        self.cfg, self.fold, self.info = cfg, fold, info
        self.full = fold == FULL
        self.fold_dir = folder if folder is not None else Path(cfg.experiment.output_dir) / f"fold{fold}"
        self.label = label or f"fold {fold}"
        self.init_weights = init_weights
        self.cfg_dict = config_to_dict(cfg)
        tcfg = cfg.train
        # weights that replace the configured pretrained ones at once: the previous stage's chosen file, or
        # the last.pt a resumed run continues (restored in full by `fit`)
        source, start = self._starting_checkpoint(resume)
        # the data first: a wrong path fails before any model is built
        norm = (start or {}).get("preprocessing") or get_preprocessing_params(cfg.model.encoder_name,
                                                                               cfg.model.encoder_weights)
        self.data: FoldData = build_fold_data(cfg, fold, info, list(norm["mean"]), list(norm["std"]))
        # train.steps: the epochs come from this loader's batches; everything below sees the derived config
        cfg, self.steps = steps_config(cfg, self.label, self.data.num_batches)
        if self.steps is not None:
            self.cfg, self.cfg_dict, tcfg = cfg, config_to_dict(cfg), cfg.train
            self.data.share_at = functools.partial(cfg.data.sampler.share_at, epochs=tcfg.epochs)
            if info.is_main:
                per_step = (f" ({self.steps['optimizer_steps_per_epoch']} optimizer steps each)"
                            if tcfg.accumulate_steps > 1 else "")
                logger.info("%s: train.steps %d -> %d epochs of %d batches%s", self.label, self.steps["steps"],
                            tcfg.epochs, self.data.num_batches, per_step)
        self.threads = apply_threads(self.data.loader_workers)
        seed_everything(cfg.experiment.seed)
        if start is None:
            model = build_model(cfg.model, len(cfg.data.classes))
        else:  # NOTE no hub, pip package or weights file: the checkpoint's weights and normalisation
            model = checkpoint_model(start, cfg, source)
        loaded = model.pretrained_cfg  # the normalisation of the weights the encoder actually loaded
        if (loaded["mean"], loaded["std"]) != (norm["mean"], norm["std"]):
            raise TrainingError(f"the encoder's weights expect inputs normalised with mean {loaded['mean']} / std "
                                f"{loaded['std']}, the data was set up with {norm['mean']} / {norm['std']}; "
                                "please report this (segfold.encoders.get_preprocessing_params disagrees)")
        self.preprocessing = loaded
        self.encoder_timm_name = model.encoder_timm_name  # what the weights built: checkpoints record it
        model.to(info.device)
        if tcfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if info.distributed and tcfg.sync_batchnorm:
            if info.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif info.is_main:
                warnings.warn("train.sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                              "each process keeps its own BatchNorm statistics", stacklevel=2)
        self.model = model
        self.ema = None
        if tcfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=tcfg.ema_decay, use_warmup=tcfg.ema_warmup)
        optimizer = build_optimizer(model, cfg.optim)
        steps_per_epoch = math.ceil(self.data.num_batches / tcfg.accumulate_steps)
        self.maximize = tcfg.monitor == "score"
        schedule = LrSchedule(optimizer, cfg.scheduler, cfg.optim, steps_per_epoch, tcfg.epochs, self.maximize)
        precision = resolve_precision(tcfg.precision, info.device)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.objective = TrainingObjective(cfg, model)
        self.trainer = Trainer(model, self.objective, optimizer, schedule, scaler, self.ema, info, precision,
                               tcfg.accumulate_steps, tcfg.grad_clip, tcfg.channels_last)
        top_k = tcfg.save_top_k
        if tcfg.average is not None and tcfg.average.method == "top_k":
            top_k = max(top_k, tcfg.average.count)  # the files the average is made of
        self.tracker = BestTracker(maximize=self.maximize, min_delta=tcfg.min_delta, top_k=top_k)
        self.frozen: bool | None = None

    def _starting_checkpoint(self, resume: bool) -> tuple[Path | None, dict[str, Any] | None]:
        """The checkpoint whose weights the model starts from (path, state), or (None, None): the configured ones.

        A resumed run's `last.pt` (when its model section is this config's: else `_restore` refuses it),
        else the previous stage's chosen file (`init_weights`).
        """
        last = self.fold_dir / "last.pt"
        if resume and last.is_file():
            state = load_checkpoint(last)
            if state["config"].get("model") == self.cfg_dict["model"]:
                return last, state
        if self.init_weights is not None:
            return self.init_weights, load_checkpoint(self.init_weights)
        return None, None

    # ------------------------------------------------------------------------------------ the run

    def fit(self, resume: bool, epoch_callback: EpochCallback | None) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        start_epoch, finished = self._restore() if resume else (0, False)
        if finished:
            # NOTE: a finished run is not extended (its schedule ended); raising train.epochs needs a new run
            logger.info("%s already finished at epoch %d: nothing to resume (to train longer, start a new run "
                        "without --resume)", self.label, start_epoch)
        if info.is_main:
            self._prepare_folder(fresh=start_epoch == 0)

        records = MetricsLogger(self.fold_dir, start_epoch) if info.is_main else None
        epoch = start_epoch
        try:
            while not finished and epoch < cfg.train.epochs:
                epoch += 1
                metrics = self._run_epoch(epoch, records)
                finished = self.tracker.should_stop(cfg.train.patience) or epoch == cfg.train.epochs
                if info.is_main:
                    self._save_last(epoch, finished, metrics)
                    records.log_epoch(metrics)
                    logger.info(self._summary_line(metrics))
                    if epoch_callback is not None and cfg.train.validates(epoch):
                        epoch_callback(epoch, metrics)
                barrier(info)
        finally:
            if records is not None:
                records.close()
        average = self._average(epoch) if cfg.train.average is not None else None
        checkpoint = avg.AVERAGED_FILE if average is not None and average["used"] else "best.pt"
        oof = None
        if info.is_main and cfg.train.write_oof:
            oof = str(self._write_oof(checkpoint))
        barrier(info)
        result = {
            "fold": self.fold,
            "best_score": self.tracker.best_score,
            "best_epoch": self.tracker.best_epoch,
            "best_weights": self.tracker.best_weights,
            "best_value": self.tracker.best_value,
            "monitor": cfg.train.monitor,
            "epochs": cfg.train.epochs,  # the run's length: configured, or derived from train.steps
            "epochs_from_steps": self.steps,
            "epochs_run": epoch,
            "stopped_early": epoch < cfg.train.epochs,  # the loop only ends early through patience
            "fold_dir": str(self.fold_dir),
            "checkpoint": checkpoint,
            "best_checkpoint": str(self.fold_dir / checkpoint),
            "average": average,
            "oof": oof,
        }
        if average is not None and average["used"]:
            result.update(best_score=average["score"], best_weights="averaged", best_value=average["value"])
        if info.is_main:
            write_json_atomic(self.fold_dir / "result.json", result)
        return broadcast_object(result, info)

    def _run_epoch(self, epoch: int, records: Any) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg, info, data = self.cfg, self.info, self.data
        self._set_frozen(epoch <= cfg.train.freeze_encoder_epochs)
        data.set_epoch(cfg.experiment.seed, epoch, info.rank)
        bar = tqdm(total=data.num_batches, desc=f"{self.label} epoch {epoch}/{cfg.train.epochs}", leave=False,
                   disable=not show_progress(info.is_main and cfg.train.progress), dynamic_ncols=True)
        start = time.perf_counter()
        with bar:
            stats = self.trainer.train_epoch(data.train_loader, epoch, data.num_batches, bar,
                                             records.log_step if records is not None else None)
        lr = current_lr(self.trainer.optimizer)
        validated = cfg.train.validates(epoch)
        results = {"model": self._evaluate(self.model, epoch) if validated else NOT_VALIDATED}
        if self.ema is not None:
            results["ema"] = self._evaluate(self.ema.module, epoch) if validated else NOT_VALIDATED
        if validated:
            self._keep_best(epoch, results)
        if info.is_main:  # NOTE the SWA window holds every epoch's weights, validated or not
            average = cfg.train.average
            if average is not None and (average.method == "swa" or self.full):
                save_checkpoint(self.fold_dir / avg.swa_file(epoch), {"model": self.model.state_dict(),
                                                                     "config": self.cfg_dict, "epoch": epoch})
                remove_files(self.fold_dir, avg.swa_window(self.fold_dir, epoch, average.count)[1])
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": stats["train_loss"],
            "valid_loss": results["model"]["valid_loss"],
            "score": results["model"]["score"],
        }
        if "ema" in results:
            metrics.update(ema_valid_loss=results["ema"]["valid_loss"], ema_score=results["ema"]["score"])
        metrics.update(
            lr=lr, best_score=self.tracker.best_score, best_epoch=self.tracker.best_epoch,
            images_per_second=stats["images"] / max(stats["seconds"], 1e-9), seconds=time.perf_counter() - start,
        )
        return metrics

    def _keep_best(self, epoch: int, results: dict[str, dict[str, float]]) -> None:
        """After a validation: step a plateau schedule, update the tracker, write `best.pt` and the top-k files."""
        key = "score" if self.maximize else "valid_loss"
        self.trainer.schedule.step_epoch(epoch, results["model"][key])
        candidates = {name: (r[key], r["score"]) for name, r in results.items()}
        if self.full:  # no validation: the latest weights (the EMA when there is one) are the result
            weights = "ema" if self.ema is not None else "model"
            self.tracker.best_epoch, self.tracker.best_weights = epoch, weights
            if self.info.is_main:
                self._save_weights(self.fold_dir / "best.pt", epoch, weights, candidates[weights])
        elif self.tracker.update(epoch, candidates) and self.info.is_main:
            self._save_weights(self.fold_dir / "best.pt", epoch, *self.tracker.pick(candidates))
        if self.info.is_main:
            name, dropped = self.tracker.offer_top_k(epoch, self.tracker.pick(candidates)[1][0])
            if name is not None:
                self._save_weights(self.fold_dir / name, epoch, *self.tracker.pick(candidates))
            remove_files(self.fold_dir, dropped)

    def _evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if self.full:
            return dict(NOT_VALIDATED)
        try:
            return evaluate(model, self.data.valid_loader, self.objective, self._score, self.trainer)
        except TrainingError as exc:
            raise TrainingError(f"epoch {epoch}, validation: {exc}; the last good checkpoint is kept") from None

    def _score(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Competition score per item of one validation batch, at the metric resolution."""
        cfg, size = self.cfg, self.data.metric_size
        probs = resize_probs(probabilities(logits, cfg.data.mode), size)
        truth = batch_truth(batch, self.data.annotations, cfg.data.mode, len(cfg.data.classes), size).to(probs.device)
        return batch_scores(probs, truth, cfg.data, cfg.postprocess.threshold)

    def _set_frozen(self, frozen: bool) -> None:
        """Freeze / thaw the encoder and (re)wrap the model for DDP and torch.compile when that changes."""
        if frozen == self.frozen:
            return
        if hasattr(self.model, "freeze_encoder"):
            self.model.freeze_encoder() if frozen else self.model.unfreeze_encoder()
        self.frozen = frozen
        net: nn.Module = self.model
        if self.info.distributed:
            # NOTE rewrapped on thaw: DDP only syncs the parameters that required grad when it was built.
            device_ids = [self.info.device] if self.info.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        if self.cfg.train.compile:
            net = torch.compile(net)
        self.trainer.model = net

    # ---------------------------------------------------------------------------------- files

    def _prepare_folder(self, fresh: bool) -> None:
        ensure_dir(self.fold_dir)
        if fresh:  # a new run replaces the records of an old one in the same folder
            shutil.rmtree(self.fold_dir / "tensorboard", ignore_errors=True)
            stale = [*self.fold_dir.glob("epoch[0-9][0-9][0-9].pt"), *self.fold_dir.glob(f"{avg.SWA_PREFIX}*.pt")]
            remove_files(self.fold_dir, [p.name for p in stale] + [avg.AVERAGED_FILE, "average.json"])
        save_config(self.cfg, self.fold_dir / "config.yaml")
        write_run_info(self.fold_dir / "run_info.json", {
            "fold": self.fold, "world_size": self.info.world_size, "device": str(self.info.device),
            "precision": self.trainer.precision, "train_images": len(self.data.train_ids),
            "valid_images": len(self.data.valid_ids), "metric_size": list(self.data.metric_size),
            "epochs": self.cfg.train.epochs, "epochs_from_steps": self.steps,
        })

    def _save_weights(self, path: Path, epoch: int, weights: str, values: tuple[float, float]) -> None:
        module = self.ema.module if weights == "ema" else self.model
        save_checkpoint(path, {
            "model": module.state_dict(), "config": self.cfg_dict, "fold": self.fold, "epoch": epoch,
            "preprocessing": self.preprocessing, "encoder_timm_name": self.encoder_timm_name,
            "weights": weights, "monitor": self.cfg.train.monitor, "value": values[0], "score": values[1],
        })

    def _save_last(self, epoch: int, finished: bool, metrics: dict[str, Any]) -> None:
        sampler = self.data.train_sampler
        save_checkpoint(self.fold_dir / "last.pt", {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.trainer.optimizer.state_dict(),
            "schedule": self.trainer.schedule.state_dict(),
            "scaler": self.trainer.scaler.state_dict() if self.trainer.scaler is not None else None,
            "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else {"epoch": epoch},
            "rng": rng_state(),
            "tracker": self.tracker.state_dict(),
            "global_step": self.trainer.global_step,
            "epoch": epoch,
            "finished": finished,
            "score": metrics["score"],
            "config": self.cfg_dict,
            "preprocessing": self.preprocessing, "encoder_timm_name": self.encoder_timm_name,
            "fold": self.fold,
        })

    def _restore(self) -> tuple[int, bool]:
        """Load `last.pt` into every stateful part; returns (completed epochs, finished)."""
        path = self.fold_dir / "last.pt"
        if not path.is_file():
            start = f"from {self.init_weights}" if self.init_weights is not None else "from scratch"
            logger.info("no %s to resume from: %s starts %s", path, self.label, start)
            return 0, False
        state = load_checkpoint(path, map_location=self.info.device)
        for section in ("model", "data"):
            if state["config"].get(section) != self.cfg_dict[section]:
                raise TrainingError(
                    f"{path}: the checkpoint was trained with another '{section}' section than this config; "
                    "resume with the same config, or train from scratch (no --resume) in another experiment.name"
                )
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.schedule.load_state_dict(state["schedule"])
        if self.trainer.scaler is not None and state.get("scaler"):
            self.trainer.scaler.load_state_dict(state["scaler"])
        if hasattr(self.data.train_sampler, "load_state_dict"):
            self.data.train_sampler.load_state_dict(state["sampler"])
        self.tracker.load_state_dict(state["tracker"])
        self.trainer.global_step = int(state["global_step"])
        set_rng_state(state["rng"])
        return int(state["epoch"]), bool(state["finished"])

    def _summary_line(self, m: dict[str, Any]) -> str:
        train = f"{self.label} epoch {m['epoch']}/{self.cfg.train.epochs}: train_loss {m['train_loss']:.4f}"
        speed = f"lr {m['lr']:.2e} {m['images_per_second']:.1f} img/s {m['seconds']:.0f}s"
        if self.full:
            return f"{train} {speed}"
        if self.cfg.train.validates(m["epoch"]):
            ema = f" ema {m['ema_score']:.4f}" if "ema_score" in m else ""
            valid = f"valid_loss {m['valid_loss']:.4f} score {m['score']:.4f}{ema}"
        else:
            valid = f"not validated (train.valid_every: {self.cfg.train.valid_every})"
        best = "" if m["best_score"] is None else (
            f" best {m['best_score']:.4f} (epoch {m['best_epoch']}, {self.tracker.best_weights})")
        return f"{train} {valid}{best} {speed}"

    def _folds_chose_average(self) -> bool:
        """A full fit cannot score its average: it follows the folds (most of them kept their average)."""
        out = Path(self.cfg.experiment.output_dir)
        inner = self.fold_dir.relative_to(out / FULL).as_posix()  # "." or "stage<s>"
        pattern = "fold[0-9]*/result.json" if inner == "." else f"fold[0-9]*/{inner}/result.json"
        chosen = [json.loads(p.read_text()).get("checkpoint") == avg.AVERAGED_FILE for p in out.glob(pattern)]
        return bool(chosen) and sum(chosen) * 2 > len(chosen)

    @torch.no_grad()
    def _write_oof(self, checkpoint: str) -> Path:
        """The fold's OOF (`fold<k>/oof.*`: its validation images at the metric resolution) from the weights
        in `checkpoint` (`best.pt` or `averaged.pt`, loaded into the model: training is over), with the aux
        head's class probabilities."""
        cfg, data = self.cfg, self.data
        entry = checkpoint_entry(self.fold_dir / checkpoint, self.fold, None)  # NOTE stamped before it is read
        best = load_checkpoint(self.fold_dir / checkpoint, map_location=self.info.device)
        entry["epoch"] = int(best["epoch"])
        logger.info("%s: OOF from %s (epoch %d, %s weights)", self.label, checkpoint, best["epoch"],
                    best.get("weights", "model"))
        record = new_record("train", cfg, checkpoints=[entry], folds=[self.fold], tta="none")
        self.model.load_state_dict(best["model"])
        self.model.eval()
        loader = DataLoader(data.valid_dataset, batch_size=cfg.train.valid_batch_size or cfg.train.batch_size,
                            shuffle=False, num_workers=self.data.loader_workers)
        with StoreWriter(self.fold_dir, OOF_NAME, data.valid_ids, cfg.data.classes, data.metric_size,
                         provenance=record) as writer:
            for batch in loader:
                out = unpack_outputs(self.model(self.trainer.to_device(batch)[0]))
                labels = out.labels.float().sigmoid() if out.labels is not None else None
                writer.add(probabilities(out.masks, cfg.data.mode), labels)
        return self.fold_dir

    def _average(self, epoch: int) -> dict[str, Any] | None:
        """Average the configured checkpoints, recompute BatchNorm, validate; keep `averaged.pt` when it wins.

        Runs on every rank (validation is sharded); rank 0 recomputes the BatchNorm statistics on its
        training batches and the others receive its weights. Returns None when fewer than two
        checkpoints exist, else `{method, epochs, score, value, won, used, bn_batches}` (also `average.json`);
        `used`: it won, or `train.average.keep` is `always` (a full fit: most folds used theirs).
        """
        cfg, info, average = self.cfg, self.info, self.cfg.train.average
        barrier(info)
        if average.method == "swa" or self.full:  # NOTE a full fit has no scores to rank: the last epochs
            names = avg.swa_window(self.fold_dir, epoch, average.count)[0]
        else:
            names = [item[2] for item in self.tracker.kept[: average.count]]
        if len(names) < 2:
            if info.is_main:
                logger.warning("%s: train.average needs two checkpoints, found %s; not averaged", self.label, names)
            return None
        states = [load_checkpoint(self.fold_dir / name, map_location=self.info.device)["model"] for name in names]
        self.model.load_state_dict(avg.average_state_dicts(states))
        bn_batches = 0
        if info.is_main:
            self.data.set_epoch(cfg.experiment.seed, cfg.train.epochs + 1, info.rank)  # a fixed, unused epoch
            limit = min(average.bn_batches or self.data.num_batches, self.data.num_batches)
            images = (self.trainer.to_device(batch)[0] for batch in self.data.train_loader)
            bn_batches = avg.recompute_batchnorm(self.model, images, limit)
        if info.distributed:
            self.model.load_state_dict(broadcast_object(self.model.state_dict(), info))
        metrics = self._evaluate(self.model, epoch)
        value = metrics["score" if self.maximize else "valid_loss"]
        won = self._folds_chose_average() if self.full else self.tracker.better(value, self.tracker.best_value)
        used = won or average.keep == "always"
        summary = {"method": average.method, "epochs": avg.epochs_of(names), "score": metrics["score"],
                   "valid_loss": metrics["valid_loss"], "value": value, "monitor": cfg.train.monitor, "won": won,
                   "used": used, "keep": average.keep, "best_epoch_value": self.tracker.best_value,
                   "bn_batches": bn_batches}
        if info.is_main:
            if used:
                self._save_weights(self.fold_dir / avg.AVERAGED_FILE, epoch, "averaged", (value, metrics["score"]))
            write_json_atomic(self.fold_dir / "average.json", summary)
            done = (f"{average.method} average of epochs {summary['epochs']} (BatchNorm recomputed on {bn_batches} "
                    "batches)")
            if self.full:  # nothing to score it on
                chosen = avg.AVERAGED_FILE if won else "best.pt (the last epoch)"
                logger.info("%s: %s; %s is used, as most folds chose", self.label, done, chosen)
            else:
                verdict = f"beats the best epoch {self.tracker.best_epoch}: {avg.AVERAGED_FILE} is used" if won else (
                    f"does not beat epoch {self.tracker.best_epoch}: "
                    + (f"{avg.AVERAGED_FILE} is used (train.average.keep: always)" if used else "best.pt is used"))
                logger.info("%s: %s: %s %.4f vs %.4f; %s", self.label, done, cfg.train.monitor, value,
                            self.tracker.best_value, verdict)
        barrier(info)
        return summary
