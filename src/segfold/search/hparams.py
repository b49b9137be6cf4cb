"""Optuna hyper-parameter search over any config key (`scripts/tune_hparams.py`).

Each trial is a short training run of one fold with sampled values written into the config; its
objective is the fold's best validation competition score, reported per epoch for pruning. The study
lives in an RDB storage (a SQLite file under outputs/ by default), so rerunning the command resumes it
and several workers, on one machine or many, can share it: the trial budget counts every worker's
trials, a worker that dies is detected by the storage heartbeat and its trial retried once.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from segfold.config import Config, config_to_dict, validate_config
from segfold.config.search import ParamSpec
from segfold.cores import PROCESSES_VAR, core_share, machine_cores
from segfold.errors import ConfigError, TrainingError
from segfold.io import atomic_path, ensure_dir, write_text_atomic
from segfold.logs import setup_logging
from segfold.train import train

logger = logging.getLogger(__name__)


TrainFn = Callable[..., dict]
_BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class _SurplusTrial(Exception):
    """The study already holds its budget of trials (another worker got there first)."""


def search_dir(cfg: Config) -> Path:
    return cfg.experiment.output_dir / "search"


def storage_url(cfg: Config) -> str:
    """`search.storage`, or a SQLite file `outputs/<experiment>/search/optuna.db`."""
    if cfg.search.storage:
        return cfg.search.storage
    folder = search_dir(cfg)
    ensure_dir(folder)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def study_name(cfg: Config) -> str:
    return cfg.search.study or f"{cfg.experiment.name}-search"


def set_by_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `data[a][b][c] = value` for `dotted == "a.b.c"`, creating sections on the way."""
    keys = dotted.split(".")
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"search.space key '{dotted}': '{'.'.join(keys[: depth + 1])}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def with_params(cfg: Config, params: dict[str, Any], **overrides: Any) -> Config:
    """A copy of `cfg` with `params` (dotted key -> value) and `overrides` applied, validated."""
    data = copy.deepcopy(config_to_dict(cfg))
    for key, value in {**params, **overrides}.items():
        set_by_path(data, key, value)
    return validate_config(data, source="search")


def check_space(cfg: Config) -> None:
    """Fail before any trial runs when a space key is not a config key or its values do not validate."""
    if not cfg.search.space:
        raise ConfigError("search.space is empty: add at least one parameter, e.g. "
                          "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")
    for key, spec in cfg.search.space.items():
        for value in _representative_values(spec):
            try:
                with_params(cfg, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"search.space '{key}' = {value!r} is not a valid config value: {exc}") from None


def _representative_values(spec: ParamSpec) -> list[Any]:
    if spec.type == "categorical":
        return list(spec.choices or [])
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [spec.low, spec.high]


def sample_params(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Ask the trial for one value per space entry."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "float":
            params[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=spec.step)
        elif spec.type == "int":
            step = int(spec.step) if spec.step else 1
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=step, log=spec.log)
        else:
            params[key] = trial.suggest_categorical(key, spec.choices)
    return params


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    search = cfg.search
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials,
                                           n_warmup_steps=search.pruner_warmup_epochs)
    if search.pruner == "hyperband":
        # NOTE with train.steps (and no search.epochs) the trial's epochs are known once it runs: Optuna's "auto"
        longest = search.epochs or (cfg.train.epochs if cfg.train.steps is None else "auto")
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=longest)
    return optuna.pruners.NopPruner()


def make_sampler(cfg: Config, offset: int, worker: int = 0) -> optuna.samplers.BaseSampler:
    """A sampler seeded from the experiment seed, the number of trials already in the study and the worker.

    NOTE: re-seeding per trial keeps a single worker reproducible; workers started together can see the
    same trial count when they ask, so the worker number enters the seed too (worker 0: as alone).
    """
    seed = cfg.experiment.seed + offset + 7919 * worker
    if cfg.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, cfg.search.trials // 4))


def open_study(cfg: Config, attempts: int = 5) -> optuna.Study:
    """Create or resume the study named by the config in its RDB storage.

    NOTE: workers started at the same moment race to create the storage's tables; the loser sees an
    integrity error from the schema migration and simply retries, by then the tables exist.
    """
    import sqlalchemy.exc

    url = storage_url(cfg)
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    # NOTE: heartbeats are marked experimental by Optuna since v2.8 but are its only stale-trial mechanism.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(attempts):
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=cfg.search.heartbeat_seconds,
                grace_period=4 * cfg.search.heartbeat_seconds,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
            return optuna.create_study(storage=storage, study_name=study_name(cfg), direction="maximize",
                                       sampler=make_sampler(cfg, 0), pruner=make_pruner(cfg), load_if_exists=True)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, optuna.exceptions.DuplicatedStudyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses the budget: finished, running, queued, or failed for a reason of its own."""
    if trial.state in _BUDGET_STATES:
        return True
    return trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs


def budget_used(study: optuna.Study) -> int:
    """Trials finished, running, or failed for a reason of their own (queued ones are still to run)."""
    return sum(_counts(t) and t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _objective(cfg: Config, train_fn: TrainFn) -> Callable[[optuna.Trial], float]:
    search = cfg.search

    def objective(trial: optuna.Trial) -> float:
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number and _counts(t)]
        if len(earlier) >= search.trials:
            trial.set_user_attr("surplus", True)
            raise _SurplusTrial(f"the study already holds {search.trials} trials")
        params = sample_params(trial, search.space)
        overrides: dict[str, Any] = {
            "experiment.output_root": str(search_dir(cfg) / "trials"),
            "experiment.name": f"trial{trial.number:04d}",
        }
        if search.epochs is not None:  # a short trial: search.epochs wins over an iteration budget too
            overrides["train.epochs"] = search.epochs
            overrides["train.steps"] = None
        trial_cfg = with_params(cfg, params, **overrides)
        logger.info("trial %d: %s", trial.number, ", ".join(f"{k}={v!r}" for k, v in params.items()))

        def report(epoch: int, metrics: dict[str, Any]) -> None:
            trial.report(float(metrics["score"]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} with score {metrics['score']:.4f}")

        try:
            result = train_fn(trial_cfg, search.fold, epoch_callback=report)
        except (TrainingError, MemoryError, RuntimeError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            trial.set_user_attr("fail_reason", reason)
            logger.warning("trial %d failed: %s", trial.number, reason)
            raise
        finally:
            if not search.keep_checkpoints:
                for ckpt in (search_dir(cfg) / "trials" / f"trial{trial.number:04d}").rglob("*.pt"):
                    ckpt.unlink(missing_ok=True)
        score = float(result["best_score"])
        logger.info("trial %d: score %.4f", trial.number, score)
        return score

    return objective


def run_search(cfg: Config, trials: int | None = None, train_fn: TrainFn | None = None,
               worker: int = 0) -> optuna.Study:
    """Run trials until the study holds `search.trials` of them (all workers together), then return it.

    Args:
        cfg: the experiment config with its `search` section.
        trials: overrides `search.trials`.
        train_fn: `train(cfg, fold, epoch_callback=...) -> {"best_score": ...}`; the real trainer by default.
        worker: this worker's number among those started together (seeds its sampler apart).
    """
    if trials is not None:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"trials": trials})})
    check_space(cfg)
    study = open_study(cfg)
    objective = _objective(cfg, train_fn if train_fn is not None else train)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    while budget_used(study) < cfg.search.trials:
        study.sampler = make_sampler(cfg, len(study.get_trials(deepcopy=False)), worker)
        study.optimize(objective, n_trials=1, catch=(_SurplusTrial, TrainingError, MemoryError, RuntimeError),
                       gc_after_trial=True)
        last = study.get_trials(deepcopy=False)[-1]
        if last.user_attrs.get("surplus"):
            break
    return study


def _worker_main(cfg: Config, trials: int | None, train_fn: TrainFn | None, worker: int, verbosity: int) -> None:
    """One worker process of `run_workers` (module level: the spawn start method imports it)."""
    setup_logging(verbosity)
    run_search(cfg, trials=trials, train_fn=train_fn, worker=worker)


def _verbosity() -> int:
    """This process's `segfold` log level as `setup_logging`'s verbosity, for the workers."""
    level = logging.getLogger("segfold").getEffectiveLevel()
    return -1 if level >= logging.WARNING else 1 if level <= logging.DEBUG else 0


def run_workers(cfg: Config, workers: int, trials: int | None = None,
                train_fn: TrainFn | None = None) -> optuna.Study:
    """`run_search` in `workers` processes on this machine sharing the study, each with its share of the cores.

    The workers learn how many they are through `SEGFOLD_LOCAL_PROCESSES`, so each trial's torch threads
    and DataLoader workers take `cores // workers` (segfold.cores) and all of them add up to the machine.
    One worker runs in this process. Returns the study once every worker has finished.

    Raises:
        TrainingError: a worker process died (its exit code is named).
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers}: start at least one worker")
    if workers == 1:
        return run_search(cfg, trials=trials, train_fn=train_fn)
    if trials is not None:
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"trials": trials})})
    check_space(cfg)
    open_study(cfg)  # NOTE: made here once, so the workers do not race to create the storage's tables
    context = multiprocessing.get_context("spawn")  # NOTE: fork after torch's threads started is unsafe
    previous = os.environ.get(PROCESSES_VAR)
    threads = torch.get_num_threads()
    os.environ[PROCESSES_VAR] = str(workers)
    procs = []
    try:  # workers 1.. in new processes; worker 0 here (one interpreter start and torch import fewer)
        procs = [context.Process(target=_worker_main,
                                 args=(cfg, None, train_fn, index, _verbosity()), name=f"worker{index}")
                 for index in range(1, workers)]
        for proc in procs:
            proc.start()
        logger.info("%d workers on this machine (%d cores, %d each)", workers, machine_cores(), core_share())
        run_search(cfg, train_fn=train_fn, worker=0)
        for proc in procs:
            proc.join()
    except BaseException:
        for proc in procs:
            proc.terminate()
        raise
    finally:
        torch.set_num_threads(threads)  # this process's trials ran with its share of the cores
        if previous is None:
            os.environ.pop(PROCESSES_VAR, None)
        else:
            os.environ[PROCESSES_VAR] = previous
    failed = [f"worker {i + 1} (exit code {p.exitcode})" for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise TrainingError(f"{', '.join(failed)} stopped with an error (see its output above); rerun the command "
                            "to resume the study")
    return open_study(cfg)


def summarize(study: optuna.Study) -> str:
    """One line per state: how many trials completed, were pruned or failed (with reasons)."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    lines = [", ".join(f"{n} {name}" for name, n in counts.items() if n)]
    for t in trials:
        if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs:
            lines.append(f"  trial {t.number} failed: {t.user_attrs['fail_reason']}")
    return "\n".join(lines)


def best_config(cfg: Config, study: optuna.Study) -> Config:
    """The experiment config with the best trial's values: what `scripts/train.py` trains next."""
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not completed:
        raise TrainingError(f"study '{study.study_name}' has no completed trial yet; run more trials")
    return with_params(cfg, study.best_trial.params, **{"experiment.name": f"{cfg.experiment.name}_best"})


def write_best_config(cfg: Config, study: optuna.Study, path: str | Path | None = None) -> Path:
    """Write the best config as YAML (default `outputs/<experiment>/search/<experiment>_best.yaml`)."""
    best = best_config(cfg, study)
    path = Path(path) if path is not None else search_dir(cfg) / f"{cfg.experiment.name}_best.yaml"
    header = (f"# best of study '{study.study_name}': trial {study.best_trial.number}, "
              f"score {study.best_value:.5f}\n")
    write_text_atomic(path, header + yaml.safe_dump(config_to_dict(best), sort_keys=False))
    return path


def save_plots(study: optuna.Study, folder: str | Path) -> list[Path]:
    """Optimisation history and parameter importances as PNGs (importances need two completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder = Path(folder)
    written = []
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    plots = [("optimization_history.png", ovm.plot_optimization_history, 1),
             ("param_importances.png", ovm.plot_param_importances, 2)]
    for name, plot, needed in plots:
        if len(completed) < needed:
            continue
        distinct = {tuple(sorted(t.params.items())) for t in completed}
        if plot is ovm.plot_param_importances and len(distinct) < 2:
            continue
        ax = plot(study)
        figure = ax.figure if hasattr(ax, "figure") else ax[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        with atomic_path(folder / name) as tmp:
            figure.savefig(tmp, dpi=100)
        plt.close(figure)
        written.append(folder / name)
    return written


def remove_study(cfg: Config) -> None:
    """Delete the study (for `--fresh`); the default SQLite file's trial folders go too."""
    try:
        optuna.delete_study(study_name=study_name(cfg), storage=storage_url(cfg))
    except KeyError:
        pass
    shutil.rmtree(search_dir(cfg) / "trials", ignore_errors=True)
