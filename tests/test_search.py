"""Optuna search plumbing: budget across workers, pruning, failures, resume, best config.

The trainer is replaced by a deterministic fake here (score = a known function of the sampled value) so
the tests check the search itself; tests/test_search_train.py runs a real tiny search end to end.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from optuna.trial import TrialState

from segfold.config import ConfigError, load_config, validate_config
from segfold.errors import TrainingError
from segfold.search import hparams


def make_cfg(tmp_path, **search):
    space = {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    data = {"experiment": {"name": "s", "output_root": str(tmp_path / "out")},
            "search": {"trials": 4, "epochs": 3, "space": space, **search}}
    return validate_config(data)


def fake_train(scores_by_epoch=None):
    """A trainer whose per-epoch score rises towards -|log10(lr) + 2| (best at lr = 1e-2)."""
    calls = []

    def train(cfg, fold, epoch_callback=None):
        calls.append((cfg.optim.lr, cfg.train.epochs, fold, cfg.experiment.name))
        final = -abs(math.log10(cfg.optim.lr) + 2.0)
        best = -math.inf
        for epoch in range(cfg.train.epochs):
            score = final - (cfg.train.epochs - 1 - epoch) * 0.1
            best = max(best, score)
            if epoch_callback is not None:
                epoch_callback(epoch, {"score": score})
        return {"best_score": best}

    train.calls = calls
    return train


def test_search_runs_budget_and_writes_best_config(tmp_path):
    cfg = make_cfg(tmp_path, pruner="none")
    train = fake_train()
    study = hparams.run_search(cfg, train_fn=train)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    # every trial is a short run (search.epochs) of the configured fold, in its own folder
    assert {c[1] for c in train.calls} == {3}
    assert {c[2] for c in train.calls} == {0}
    assert len({c[3] for c in train.calls}) == 4
    path = hparams.write_best_config(cfg, study)
    best = load_config(path)
    assert best.optim.lr == pytest.approx(study.best_params["optim.lr"])
    assert best.train.epochs == cfg.train.epochs  # the short-run epochs are not carried into the best config
    assert best.experiment.name == "s_best"


def test_search_resumes_instead_of_restarting(tmp_path):
    cfg = make_cfg(tmp_path, pruner="none")
    hparams.run_search(cfg, trials=2, train_fn=fake_train())
    train = fake_train()
    study = hparams.run_search(cfg, trials=3, train_fn=train)
    assert len(train.calls) == 1  # only the missing trial ran
    assert len(study.trials) == 3


def test_seeded_search_is_reproducible(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = make_cfg(tmp_path / name, pruner="none")
        study = hparams.run_search(cfg, train_fn=fake_train())
        runs.append([t.params["optim.lr"] for t in study.trials])
    assert runs[0] == runs[1]


def test_median_pruner_prunes_a_bad_trial(tmp_path):
    cfg = make_cfg(tmp_path, pruner="median", pruner_startup_trials=1, trials=3)
    study = hparams.open_study(cfg)
    for lr in (1e-2, 1e-4, 1e-2):  # queued values run first, in this order
        study.enqueue_trial({"optim.lr": lr})
    study = hparams.run_search(cfg, train_fn=fake_train())
    states = [(t.params["optim.lr"], t.state) for t in study.trials]
    # trial 1 (lr=1e-4) scores -2.2 at epoch 0, below the median -0.2 of the finished trial 0: pruned there
    assert states == [(1e-2, TrialState.COMPLETE), (1e-4, TrialState.PRUNED), (1e-2, TrialState.COMPLETE)]
    assert list(study.trials[1].intermediate_values) == [0]


def test_failed_trial_is_recorded_and_search_goes_on(tmp_path):
    cfg = make_cfg(tmp_path, pruner="none", trials=3)
    good = fake_train()

    def flaky(trial_cfg, fold, epoch_callback=None):
        if trial_cfg.experiment.name == "trial0001":
            raise TrainingError("loss is nan at epoch 1, step 3")
        return good(trial_cfg, fold, epoch_callback)

    study = hparams.run_search(cfg, train_fn=flaky)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "loss is nan at epoch 1, step 3" in failed[0].user_attrs["fail_reason"]
    assert len(study.trials) == 3 and "1 fail" in hparams.summarize(study)


def test_space_key_typo_is_a_config_error(tmp_path):
    cfg = make_cfg(tmp_path, space={"optim.lrr": {"type": "float", "low": 0.1, "high": 1.0}})
    with pytest.raises(ConfigError, match=r"search.space 'optim.lrr'.*did you mean 'optim.lr'"):
        hparams.run_search(cfg, train_fn=fake_train())


def test_param_spec_validation():
    with pytest.raises(ConfigError, match="'low' .* must be below 'high'"):
        validate_config({"search": {"space": {"optim.lr": {"type": "float", "low": 1.0, "high": 0.1}}}})
    with pytest.raises(ConfigError, match="categorical choices must be numbers"):
        validate_config({"search": {"space": {"loss.terms": {"type": "categorical", "choices": [[{"name": "bce"}]]}}}})
    with pytest.raises(ConfigError, match="non-empty 'choices'"):
        validate_config({"search": {"space": {"model.arch": {"type": "categorical"}}}})


WORKER = textwrap.dedent(
    """
    import sys, time, math
    from segfold.config import validate_config
    from segfold.logs import setup_logging
    from segfold.search import hparams

    def train(cfg, fold, epoch_callback=None):
        time.sleep(0.3)
        return {"best_score": -abs(math.log10(cfg.optim.lr) + 2.0)}

    root = sys.argv[1]
    space = {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    cfg = validate_config({"experiment": {"name": "w", "output_root": root},
                           "search": {"trials": 6, "pruner": "none", "space": space}})
    setup_logging()  # the trial lines on stdout, as the script shows them
    study = hparams.run_search(cfg, train_fn=train)
    """
)


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = str(tmp_path / "out")
    procs = [subprocess.Popen([sys.executable, str(script), root], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ran = [line for out in outputs for line in out.splitlines() if ": score " in line]
    db = tmp_path / "out" / "w" / "search" / "optuna.db"
    study = optuna.load_study(study_name="w-search", storage=f"sqlite:///{db}")
    real = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert len(real) == 6 and all(t.state == TrialState.COMPLETE for t in real)
    assert sorted(t.number for t in real) == list(range(6))
    assert len(ran) == 6  # no trial ran twice, none was lost
    assert all(out.count("score") >= 1 for out in outputs), "both workers ran trials"


def recording_train(cfg, fold, epoch_callback=None):
    """A trainer for worker processes (module level, so spawn can import it): notes where it ran, then scores.

    Each call waits (60 s at most) until calls from two processes have started, so both workers run trials
    however unevenly they start.
    """
    import json
    import os
    import time
    from pathlib import Path

    from segfold import cores

    folder = Path(cfg.experiment.output_root).parent / "calls"
    folder.mkdir(exist_ok=True)
    (folder / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while len(list(folder.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    record = {"pid": os.getpid(), "processes": os.environ.get(cores.PROCESSES_VAR), "share": cores.core_share(),
              "lr": cfg.optim.lr}
    (folder / f"{cfg.experiment.name}.json").write_text(json.dumps(record))
    return {"best_score": -abs(math.log10(cfg.optim.lr) + 2.0)}


@pytest.mark.slow
def test_run_workers_starts_workers_that_share_the_cores_and_the_study(tmp_path, monkeypatch):
    import json

    from segfold import cores

    monkeypatch.delenv(cores.PROCESSES_VAR, raising=False)
    cfg = make_cfg(tmp_path, trials=6, pruner="none", sampler="random")
    threads = torch.get_num_threads()
    study = hparams.run_workers(cfg, 2, train_fn=recording_train)
    real = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert len(real) == 6 and all(t.state == TrialState.COMPLETE for t in real)
    calls = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "s" / "search" / "calls").glob("*.json"))]
    assert len(calls) == 6
    assert {c["processes"] for c in calls} == {"2"}
    assert {c["share"] for c in calls} == {max(1, cores.machine_cores() // 2)}
    pids = {c["pid"] for c in calls}
    assert len(pids) == 2 and __import__("os").getpid() in pids  # worker 0 here, worker 1 a new process
    assert torch.get_num_threads() == threads  # this process's threads are given back after its share
    assert len({c["lr"] for c in calls}) == 6  # workers asking at the same moment still draw different values
    assert cores.PROCESSES_VAR not in __import__("os").environ  # the parent's environment is left as it was
