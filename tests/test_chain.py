"""The whole chain through its scripts on a tiny generated competition, and a real hyper-parameter search."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from segfold.config import load_config
from segfold.data import rle

TINY = {
    "experiment": {"name": "tiny", "seed": 3},
    "data": {"image_size": [32, 64], "metric_size": [32, 64], "folds": {"n_folds": 2}},
    "model": {"arch": "Unet", "encoder_name": "test_resnet", "encoder_weights": None,
              "params": {"decoder_channels": [16, 16, 8, 8, 8]}},
    "optim": {"lr": 3e-3},
    "train": {"epochs": 2, "batch_size": 4, "progress": False},
    "infer": {"tta": "flips"},
    "search": {"trials": 2, "epochs": 1, "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2,
                                                                "log": True}}},
}


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    from segfold.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("chain")
    data = make_demo_data(root / "demo", seed=1, n_train=24, n_test=6)
    config = dict(TINY)
    config["experiment"] = {**TINY["experiment"], "output_root": str(root / "outputs")}
    config["data"] = {**TINY["data"], "root": str(data)}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_script(name, *args, cwd=None):
    result = subprocess.run([sys.executable, f"scripts/{name}.py", *args], capture_output=True, text=True,
                            timeout=1800, cwd=cwd)  # a hang guard: the chain takes minutes on a loaded machine
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_whole_chain_through_the_scripts(tiny_experiment, repo_root):
    out = run_script("run_chain", "--config", str(tiny_experiment), cwd=repo_root)
    cfg = load_config(tiny_experiment)
    exp = cfg.experiment.output_dir
    for stage in ("make_folds", "train", "oof", "tune_thresholds", "predict", "make_submission"):
        assert f"=== {stage} done" in out
    # two folds trained, their OOF gathered, thresholds tuned with scores before and after
    assert (exp / "fold0" / "best.pt").is_file() and (exp / "fold1" / "best.pt").is_file()
    tuned = json.loads((exp / "thresholds.json").read_text())
    assert tuned["score_after"] >= tuned["score_before"] - 1e-9
    # the submission keeps the sample's rows and order, and every mask decodes inside a 128 x 256 image
    sample = pd.read_csv(cfg.data.root_path / "sample_submission.csv")
    submission = pd.read_csv(exp / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == list(sample.columns)
    assert submission[["ImageId", "ClassId"]].values.tolist() == sample[["ImageId", "ClassId"]].values.tolist()
    for encoded in submission["EncodedPixels"]:
        rle.decode(encoded, (128, 256))
    score = json.loads((exp / "submission_score.json").read_text())["score"]
    assert 0.0 <= score <= 1.0
    assert f"OOF score before tuning: {tuned['score_before']}" in out


@pytest.mark.slow
def test_real_search_completes_resumes_and_writes_a_trainable_config(tiny_experiment, repo_root):
    out = run_script("tune_hparams", "--config", str(tiny_experiment), "--trials", "2", cwd=repo_root)
    assert "2 complete" in out
    out = run_script("tune_hparams", "--config", str(tiny_experiment), "--trials", "3", cwd=repo_root)
    assert "3 complete" in out  # resumed: one more trial, not three
    cfg = load_config(tiny_experiment)
    best_path = cfg.experiment.output_dir / "search" / "tiny_best.yaml"
    best = load_config(best_path)
    assert best.experiment.name == "tiny_best" and 1e-3 <= best.optim.lr <= 1e-2
    assert (cfg.experiment.output_dir / "search" / "optimization_history.png").is_file()
