"""Build an offline Kaggle inference package (`scripts/package.py`).

The folder holds `wheels/` (segfold's own wheel and the configured dependencies), `models/` (the
weights, without optimizer state, of each chosen fold and, with `infer.models: full|both`, of the
full-data fit in `full/`; the resolved config, `thresholds.json`, `normalisation.json`, all listed
in `SHA256SUMS`), `infer.py`, `infer.ipynb` and a README with the
runtime estimate: the package's own prediction of a few test images, timed here for each candidate
runtime (PyTorch eager and, where the export works, onnxruntime), the faster one kept.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from segfold.config.load import config_to_dict, repo_root
from segfold.data.formats import image_path, read_test_ids
from segfold.encoders import resolve_encoder_name
from segfold.errors import ConfigError, ExportError, TrainingError
from segfold.export import export_model, export_size, exported_path, fold_checkpoint_paths
from segfold.io import atomic_path, sha256_file, write_json_atomic
from segfold.package.kernel import (
    CONFIG_FILE,
    MODELS,
    NORMALISATION_FILE,
    THRESHOLDS_FILE,
    WHEELS,
    kernel_config,
    prepare_work_dir,
    write_checksums,
)
from segfold.package.templates import infer_ipynb, infer_py, readme
from segfold.package.wheels import build_own_wheel, download_wheels
from segfold.predict import predict_test
from segfold.probs import (
    FULL_DIR,
    fold_checkpoints,
    full_checkpoint,
    load_checkpoint,
    load_checkpoint_model,
    resolve_device,
)

if TYPE_CHECKING:
    from segfold.config import Config

logger = logging.getLogger(__name__)


# what a weights-only checkpoint keeps (no optimizer, scheduler, scaler, sampler or RNG state)
KEPT_KEYS = ("model", "config", "fold", "epoch", "preprocessing", "encoder_timm_name", "weights", "monitor", "value",
             "score")


def _weights_only(state: dict[str, Any], model: nn.Module, fp16: bool) -> dict[str, Any]:
    """The checkpoint to ship: weights (float16 if asked), the normalisation, and a config that builds the
    same network offline (no pretrained weights to fetch; the timm model actually built named)."""
    weights = {key: (value.half() if fp16 and value.is_floating_point() else value)
               for key, value in state["model"].items()}
    config = copy.deepcopy(state["config"])
    config["model"]["encoder_weights"] = None
    built = getattr(model, "encoder_timm_name", None)
    if built and resolve_encoder_name(config["model"]["encoder_name"]) != built:
        config["model"]["encoder_name"] = built  # NOTE e.g. the tf_ twin that efficientnet_pytorch weights build
    return {**{key: state[key] for key in KEPT_KEYS if key in state}, "model": weights, "config": config,
            "preprocessing": model.pretrained_cfg}


def _ship(path: Path, folder: Path, fp16: bool, what: str) -> str:
    """Write `path` weights-only into `folder` (with the `result.json` that 'auto' reads); its normalisation as JSON."""
    target = folder / path.name  # NOTE infer.checkpoint may be 'auto': the file chosen
    original = load_checkpoint_model(path)[0]
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        torch.save(_weights_only(load_checkpoint(path), original, fp16), tmp)
    write_json_atomic(folder / "result.json", {"checkpoint": path.name})
    model = load_checkpoint_model(target)[0]
    if model.pretrained_cfg != original.pretrained_cfg:
        raise ConfigError(f"{what}: the packaged model normalises its input differently from {path}")
    return json.dumps({**model.pretrained_cfg, "in_channels": int(model.config.get("in_channels", 3))}, sort_keys=True)


def _write_models(cfg: Config, folds: Sequence[int] | None, models_dir: Path
                  ) -> tuple[list[int], str | None, dict[str, Any]]:
    """Weights-only checkpoints of the models `infer.models` names (the folds', the full-data fit's in `full/`),
    thresholds and normalisation; returns the folds, the full fit's checkpoint name (None) and the normalisation."""
    thresholds = cfg.experiment.output_dir / THRESHOLDS_FILE
    if not thresholds.is_file():
        raise ConfigError(f"{thresholds}: missing; tune the post-processing first (python scripts/tune_thresholds.py "
                          "--config ...), the package applies the tuned rules")
    models = cfg.infer.models
    paths = fold_checkpoint_paths(cfg, folds if folds is not None else cfg.infer.folds) if models != "full" else {}
    norms = {_ship(path, models_dir / f"fold{fold}", cfg.package.fp16, f"fold {fold}") for fold, path in paths.items()}
    if len(norms) > 1:
        raise ConfigError(f"folds {sorted(paths)} normalise their input differently; package each group with --folds")
    full = None
    if models != "folds":
        full = full_checkpoint(cfg.experiment.output_dir, cfg.infer.checkpoint)
        if not full.is_file():
            raise TrainingError(f"infer.models={models} needs the full-data fit's {full}: run scripts/train.py "
                                "--config ... --fold full first (or package with --set infer.models=folds)")
        norms.add(_ship(full, models_dir / FULL_DIR, cfg.package.fp16, "the full-data fit"))
        if len(norms) > 1:
            raise ConfigError(f"the full-data fit {full} normalises its input differently from folds {sorted(paths)}; "
                              "package them apart (--set infer.models=folds, or full)")
    shutil.copyfile(thresholds, models_dir / THRESHOLDS_FILE)
    normalisation = json.loads(norms.pop())
    (models_dir / NORMALISATION_FILE).write_text(json.dumps(normalisation, indent=1) + "\n")
    return sorted(paths), None if full is None else full.name, normalisation


def _packaged_checkpoint(cfg: Config, package: Path, fold: int) -> Path:
    """The checkpoint file of `fold` in the package (`infer.checkpoint`, or the one the fold chose for 'auto')."""
    return fold_checkpoints(package / MODELS, cfg.infer.checkpoint, [fold])[0][fold]


def _export_onnx(cfg: Config, package: Path, folds: Sequence[int]) -> str | None:
    """ONNX exports of the packaged folds next to them; the reason when one cannot be exported."""
    for fold in folds:
        checkpoint = _packaged_checkpoint(cfg, package, fold)
        model = load_checkpoint_model(checkpoint)[0]
        try:
            export_model(model, exported_path(checkpoint, "onnx"), "onnx", export_size(cfg),
                         source=checkpoint.name, source_sha256=sha256_file(checkpoint))
        except (ExportError, ConfigError) as error:
            return str(error)
    return None


def _estimate_input(cfg: Config, folder: Path, count: int) -> int:
    """A data folder with the first ``count`` test images (linked), for timing; returns how many."""
    ids = read_test_ids(cfg.data)[:count]
    test_dir = folder / cfg.data.test_images
    test_dir.mkdir(parents=True)
    for image_id in ids:
        source = image_path(cfg.data, image_id, "test")
        (test_dir / source.name).symlink_to(source.resolve())
    return len(ids)


def time_runtimes(cfg: Config, package: Path, runtimes: Sequence[str], passes: int = 2) -> dict[str, dict[str, float]]:
    """Seconds of the package's own prediction (models loaded, TTA, tiles, store) of a few test images.

    Each runtime runs ``passes`` times, interleaved with the others, and keeps its fastest pass: the
    first pass of the first runtime pays one-off costs (imports, allocations) the others would not.
    """
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = _estimate_input(cfg, Path(tmp) / "input", cfg.package.estimate_images)
        for _ in range(passes):
            for runtime in runtimes:
                run_cfg = kernel_config(package, Path(tmp) / "input", Path(tmp) / f"work-{runtime}",
                                        {"data": {"sample_submission": None}, "infer": {"runtime": runtime}})
                prepare_work_dir(package, run_cfg)
                started = time.perf_counter()
                predict_test(run_cfg)
                seconds = time.perf_counter() - started
                best[runtime] = min(seconds, best.get(runtime, seconds))
                logger.debug("%s: %d images in %.1fs", runtime, images, seconds)
    return {runtime: {"seconds": seconds, "images": images, "per_image": seconds / images}
            for runtime, seconds in best.items()}


def default_input(cfg: Config) -> str:
    """Where the kernel finds the competition's data on Kaggle."""
    return f"/kaggle/input/{cfg.package.competition or Path(cfg.data.root).name}"


def build_package(cfg: Config, folds: Sequence[int] | None = None, out: str | os.PathLike | None = None,
                  runtime: str | None = None, config_path: str = "") -> dict[str, Any]:
    """Write the package folder (see the module docstring) and return what went into it.

    Args:
        cfg: the experiment config (its `package` section says which wheels, fp16, runtime, sizes).
        folds: the folds to ship (default `infer.folds`, else every trained fold; none with
            `infer.models: full`). `infer.models: full|both` ships the full-data fit too, weighted in
            the kernel as `scripts/predict.py` weights it (`infer.full_weight`).
        out: the folder (default `dist/<experiment>-kernel`); replaced when it exists.
        runtime: override `package.runtime` ("auto", "torch" or "onnx").
        config_path: the config file's name, for the README.
    """
    runtime = runtime or cfg.package.runtime
    if cfg.infer.models != "folds" and runtime == "onnx":
        raise ConfigError(f"infer.models={cfg.infer.models} uses the full-data fit, which runs in PyTorch only; "
                          "package with --runtime torch (or auto)")
    out = Path(out) if out is not None else repo_root() / "dist" / f"{cfg.experiment.name}-kernel"
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / MODELS).mkdir(parents=True)
    used, full, normalisation = _write_models(cfg, folds, partial / MODELS)
    resolved = config_to_dict(cfg)
    resolved["infer"]["folds"] = used
    resolved["model"]["encoder_weights"] = None  # the weights are in models/; nothing is fetched
    notes = []
    candidates = ["torch"] if runtime == "torch" else ["torch", "onnx"] if runtime == "auto" else ["onnx"]
    if cfg.infer.models != "folds" and "onnx" in candidates:
        notes.append(f"onnx left out: infer.models={cfg.infer.models} uses the full-data fit, which runs in PyTorch "
                     "only")
        candidates = ["torch"]
    if "onnx" in candidates:
        reason = _export_onnx(cfg, partial, used)
        if reason is not None:
            if runtime == "onnx":
                raise ExportError(f"package.runtime is onnx but the export failed: {reason}")
            notes.append(f"onnx left out: {reason}")
            candidates = ["torch"]
    resolved["infer"]["runtime"] = "torch"
    (partial / MODELS / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
    timings = time_runtimes(cfg, partial, candidates)
    chosen = min(timings, key=lambda name: timings[name]["per_image"])
    resolved["infer"]["runtime"] = chosen
    (partial / MODELS / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
    if chosen != "onnx":
        for fold in used:
            exported_path(_packaged_checkpoint(cfg, partial, fold), "onnx").unlink(missing_ok=True)
    write_checksums(partial / MODELS)

    wheels = partial / WHEELS
    wheels.mkdir()
    build_own_wheel(repo_root(), wheels)
    names = list(dict.fromkeys([*cfg.package.wheels, *(["onnxruntime"] if chosen == "onnx" else [])]))
    download_wheels(names, wheels, cfg.package.find_links, cfg.package.python_version, cfg.package.platform)
    write_checksums(wheels)

    name = cfg.experiment.name
    test_images = cfg.package.test_images or len(read_test_ids(cfg.data))
    per_image = timings[chosen]["per_image"]
    facts = {
        "name": name, "config": config_path or "the experiment config", "default_input": default_input(cfg),
        "folds": used, "full": full, "full_weight": cfg.infer.full_weight if cfg.infer.models == "both" else None,
        "arch": cfg.model.arch, "encoder": cfg.model.encoder_name, "fp16": cfg.package.fp16,
        "runtime": chosen, "tta": cfg.infer.tta, "timings": timings, "estimate_images": timings[chosen]["images"],
        "device": _device_name(cfg), "threads": torch.get_num_threads(), "test_images": test_images,
        "test_images_source": "package.test_images" if cfg.package.test_images else "the local test folder",
        "estimate_minutes": per_image * test_images / 60, "wheels": sorted(p.name for p in wheels.glob("*.whl")),
        "normalisation": normalisation, "notes": notes,
    }
    (partial / "infer.py").write_text(infer_py(name, default_input(cfg)))
    (partial / "infer.ipynb").write_text(infer_ipynb(name, default_input(cfg), out.name))
    (partial / "README.md").write_text(readme(facts))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return {**facts, "out": str(out)}


def _device_name(cfg: Config) -> str:
    device = resolve_device(cfg.infer.device, key="infer.device")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"
