"""The offline Kaggle package: built from a tiny trained experiment, installed into a fresh virtual
environment with `pip --no-index`, run on the demo's test images; its submission must be the one
`make_submission.py` writes. Plus the checksum and kernel-config checks on their own."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import site
import subprocess
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segfold.config import load_config
from segfold.errors import ConfigError, WeightsError
from segfold.package.kernel import kernel_config, verify_checksums, write_checksums

TINY = {
    "experiment": {"name": "pkg", "seed": 3},
    "data": {"image_size": [32, 64], "metric_size": [32, 64], "folds": {"n_folds": 2}},
    "model": {"arch": "Unet", "encoder_name": "test_resnet", "encoder_weights": None,
              "params": {"decoder_channels": [16, 16, 8, 8, 8]}},
    "optim": {"lr": 3e-3},
    "train": {"epochs": 1, "batch_size": 4, "progress": False},
    "infer": {"tta": "flips"},
    "package": {"wheels": ["ttach"], "estimate_images": 2},
}


def script(repo_root, name):
    return runpy.run_path(str(repo_root / "scripts" / f"{name}.py"), run_name=f"{name}_script")["main"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Fold 0 trained for one epoch, rules in thresholds.json, and make_submission.py's submission."""
    from segfold.data.demo import make_demo_data
    from segfold.postprocess import PostprocessParams, save_thresholds
    from segfold.train import train

    root = tmp_path_factory.mktemp("package")
    data = make_demo_data(root / "demo", seed=1, n_train=12, n_test=5)
    config = {**TINY, "experiment": {**TINY["experiment"], "output_root": str(root / "outputs")},
              "data": {**TINY["data"], "root": str(data)}}
    path = root / "pkg.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    torch.set_num_threads(1)
    train(cfg, 0)
    # a low threshold so that the barely trained model's masks are not all empty
    rules = cfg.postprocess.model_copy(update={"threshold": 0.2})
    params = PostprocessParams.from_config(rules, cfg.data.classes)
    save_thresholds(cfg.experiment.output_dir / "thresholds.json", params)
    return path, cfg


@pytest.mark.slow
def test_package_installs_offline_and_reproduces_the_submission(trained, repo_root, tmp_path, capsys):
    path, cfg = trained
    script(repo_root, "predict")(["--config", str(path)])
    script(repo_root, "make_submission")(["--config", str(path)])
    expected = (cfg.experiment.output_dir / "submission.csv").read_text()
    assert sum(1 for line in expected.splitlines()[1:] if line.split(",")[-1].strip()) > 0, "some masks non-empty"

    out = tmp_path / "kernel"
    facts = script(repo_root, "package")(["--config", str(path), "--out", str(out), "--runtime", "torch"])
    printed = capsys.readouterr().out
    assert "torch: 2 test images in" in printed and "estimate for 5 test images" in printed
    assert facts["folds"] == [0] and facts["runtime"] == "torch"
    wheels = sorted(p.name.split("-")[0] for p in (out / "wheels").glob("*.whl"))
    assert wheels == ["segfold", "ttach"]
    state = torch.load(out / "models" / "fold0" / "best.pt", weights_only=True)
    assert "optimizer" not in state and set(state) >= {"model", "config", "preprocessing"}
    assert state["config"]["model"]["encoder_weights"] is None, "nothing to fetch offline"
    packaged = yaml.safe_load((out / "models" / "config.yaml").read_text())
    assert packaged["infer"]["folds"] == [0] and packaged["infer"]["runtime"] == "torch"
    assert json.loads((out / "models" / "normalisation.json").read_text())["in_channels"] == 3
    assert "about" in (out / "README.md").read_text() and json.loads((out / "infer.ipynb").read_text())["cells"]

    # a fresh environment: torch & co from the system (a Kaggle image has them), segfold only from the wheel
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    # NOTE the tests may themselves run inside a virtual environment (make test's .venv), whose packages
    # the new one's system_site_packages does not see: list the running environment's site folders too.
    purelib = Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])
    (purelib / "_outer_site.pth").write_text("".join(f"{folder}\n" for folder in site.getsitepackages()))
    python = env_dir / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "PYTHONPATH"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([str(python), str(out / "infer.py"), str(cfg.data.root_path), "--out",
                             str(tmp_path / "submission.csv"), "--work", str(tmp_path / "work")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"from {env_dir}" in result.stdout, "segfold came from the package's wheel, not the checkout"
    assert (tmp_path / "submission.csv").read_text() == expected


@pytest.fixture(scope="module")
def with_full_fit(tmp_path_factory):
    """Fold 0 and the full-data fit (one epoch each), rules in thresholds.json; weights kept in float32."""
    from segfold.data.demo import make_demo_data
    from segfold.postprocess import PostprocessParams, save_thresholds
    from segfold.train import train

    root = tmp_path_factory.mktemp("package_full")
    data = make_demo_data(root / "demo", seed=2, n_train=8, n_test=3)
    config = {**TINY, "experiment": {**TINY["experiment"], "name": "pkgfull", "output_root": str(root / "outputs")},
              "data": {**TINY["data"], "root": str(data)}, "train": {**TINY["train"], "full_epochs": 1},
              "infer": {"tta": "flips", "full_weight": 0.3}, "package": {**TINY["package"], "fp16": False}}
    path = root / "pkgfull.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    torch.set_num_threads(1)
    train(cfg, 0)
    train(cfg, "full")
    save_thresholds(cfg.experiment.output_dir / "thresholds.json",
                    PostprocessParams.from_config(cfg.postprocess, cfg.data.classes))
    return path


def test_packaged_kernel_predicts_what_predict_does_with_folds_full_or_both(with_full_fit, tmp_path, monkeypatch):
    from segfold.package import build
    from segfold.package.kernel import run_kernel
    from segfold.predict import predict_test
    from segfold.probs import ProbStore

    # the wheels do not change a probability: skip building and downloading them here (the slow test installs them)
    monkeypatch.setattr(build, "build_own_wheel", lambda repo, dest: None)
    monkeypatch.setattr(build, "download_wheels", lambda *args, **kwargs: None)
    probs = {}
    for models in ("folds", "full", "both"):
        cfg = load_config(with_full_fit, [f"infer.models={models}"])
        expected = np.array(predict_test(cfg).probs)  # what scripts/predict.py writes
        out = tmp_path / models
        # auto would time ONNX against PyTorch for the folds alone (ONNX probabilities differ in the last bits)
        facts = build.build_package(cfg, out=out / "package", runtime="torch" if models == "folds" else "auto")
        assert facts["runtime"] == "torch"
        assert (facts["folds"], facts["full"]) == {"folds": ([0], None), "full": ([], "best.pt"),
                                                   "both": ([0], "best.pt")}[models]
        assert (out / "package" / "models" / "full").is_dir() == (models != "folds")
        assert yaml.safe_load((out / "package" / "models" / "config.yaml").read_text())["infer"]["models"] == models
        run_kernel(out / "package", cfg.data.root_path, out / "submission.csv", out / "work")
        kernel = ProbStore.open(out / "work" / "pkgfull" / "test", "test")
        assert kernel.provenance["models"] == models
        np.testing.assert_array_equal(np.array(kernel.probs), expected)
        probs[models] = expected.astype(np.float64)
    assert "onnx left out: infer.models=both uses the full-data fit" in facts["notes"][0]
    assert "full/best.pt` (the full-data fit, weighted 0.3 against the folds' 0.7)" in (
        tmp_path / "both" / "package" / "README.md").read_text()
    # the models differ, and both is their 0.7 / 0.3 mean (probabilities averaged before the uint8 rounding)
    assert np.abs(probs["folds"] - probs["full"]).max() > 5
    assert np.abs(probs["both"] - (0.7 * probs["folds"] + 0.3 * probs["full"])).max() <= 1.0


def test_checksums_catch_a_changed_file(tmp_path):
    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0" / "best.pt").write_bytes(b"weights")
    (tmp_path / "config.yaml").write_text("a: 1\n")
    listing = write_checksums(tmp_path).read_text()
    # sha256(b"weights"), computed independently of segfold.io
    assert f"{hashlib.sha256(b'weights').hexdigest()}  fold0/best.pt" in listing
    assert verify_checksums(tmp_path) == 2
    (tmp_path / "config.yaml").write_text("a: 2\n")
    with pytest.raises(WeightsError, match="config.yaml: checksum differs"):
        verify_checksums(tmp_path)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(WeightsError, match="config.yaml: listed in SHA256SUMS but missing"):
        verify_checksums(tmp_path)


def test_kernel_config_moves_data_and_outputs(tmp_path):
    cfg = load_config(None, ["experiment.name=k"])
    (tmp_path / "models" / "fold2").mkdir(parents=True)
    (tmp_path / "models" / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    moved = kernel_config(tmp_path, tmp_path / "comp", tmp_path / "work")
    assert moved.data.root_path == (tmp_path / "comp").resolve()
    assert moved.experiment.output_dir == (tmp_path / "work").resolve() / "k"
    assert moved.infer.folds == [2]


def test_kernel_config_refuses_duplicate_keys_and_a_missing_config(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(WeightsError, match=r"config.yaml: missing; the package is incomplete"):
        kernel_config(tmp_path, tmp_path / "comp", tmp_path / "work")
    (tmp_path / "models" / "config.yaml").write_text("infer:\n  tta: none\n  tta: flips\n")
    with pytest.raises(ConfigError, match=r"config.yaml: key 'infer.tta' appears twice, at lines 2 and 3"):
        kernel_config(tmp_path, tmp_path / "comp", tmp_path / "work")


def test_package_refuses_untuned_experiments(tmp_path):
    from segfold.package.build import build_package

    cfg = load_config(None, [f"experiment.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="thresholds.json: missing; tune the post-processing first"):
        build_package(cfg, out=tmp_path / "out")
