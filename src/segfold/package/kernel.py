"""The inference of an offline package, as its `infer.py` / `infer.ipynb` run it on Kaggle.

`run_kernel(package, input_dir, out)` checks the package's files against their checksums, reads the
packaged config with the data root moved to `input_dir`, lays out a working experiment folder (the
fold folders of `models/` and the full-data fit's `full/` linked in, `thresholds.json` copied), then
runs the same code as `scripts/predict.py` (the models `infer.models` names, the full fit weighted
`infer.full_weight`) and `scripts/make_submission.py` and copies `submission.csv` to `out`.
Nothing here reaches the network: models are built without pretrained weights and the normalisation
is checked against the packaged `normalisation.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segfold.config.load import read_yaml, validate_config
from segfold.errors import DataError, WeightsError
from segfold.io import atomic_path, sha256_file
from segfold.predict import load_models, predict_test
from segfold.probs import FULL_DIR, resolve_device
from segfold.submit import make_submission

if TYPE_CHECKING:
    from segfold.config import Config

logger = logging.getLogger(__name__)

MODELS = "models"
WHEELS = "wheels"
CHECKSUMS = "SHA256SUMS"
CONFIG_FILE = "config.yaml"
NORMALISATION_FILE = "normalisation.json"
THRESHOLDS_FILE = "thresholds.json"


def write_checksums(folder: Path) -> Path:
    """``folder/SHA256SUMS``: one ``<sha256>  <relative path>`` line per file below ``folder``, sorted."""
    lines = [f"{sha256_file(path)}  {path.relative_to(folder).as_posix()}"
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != CHECKSUMS]
    target = folder / CHECKSUMS
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return target


def verify_checksums(folder: Path) -> int:
    """Check every file listed in ``folder/SHA256SUMS``; returns how many were checked.

    Raises:
        WeightsError: the list is missing, or a file is missing or differs (a broken upload).
    """
    listing = folder / CHECKSUMS
    if not listing.is_file():
        raise WeightsError(f"{listing}: missing; the package is incomplete (rebuild it with scripts/package.py)")
    count = 0
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split("  ", 1)
        path = folder / name
        if not path.is_file():
            raise WeightsError(f"{path}: listed in {listing.name} but missing; upload the whole package folder")
        if sha256_file(path) != digest:
            raise WeightsError(f"{path}: checksum differs from {listing.name}; the file is damaged or was changed "
                               "after packaging (rebuild and re-upload the package)")
        count += 1
    return count


def package_folds(package: Path) -> list[int]:
    """The fold numbers packaged in ``package/models/fold<k>/``."""
    return sorted(int(p.name[4:]) for p in (package / MODELS).glob("fold*") if p.name[4:].isdigit())


def kernel_config(package: Path, input_dir: str | os.PathLike, work_dir: str | os.PathLike,
                  overrides: dict[str, Any] | None = None) -> Config:
    """The packaged config with ``data.root`` at ``input_dir`` and outputs under ``work_dir``."""
    path = package / MODELS / CONFIG_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: missing; the package is incomplete (rebuild it with scripts/package.py)")
    raw = read_yaml(path)
    raw.setdefault("data", {})["root"] = str(Path(input_dir).resolve())
    raw["data"]["test_labels"] = None
    raw.setdefault("experiment", {})["output_root"] = str(Path(work_dir).resolve())
    raw.setdefault("infer", {})["folds"] = package_folds(package)
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return validate_config(raw, source=str(path))


def prepare_work_dir(package: Path, cfg: Config) -> Path:
    """``<work>/<experiment>/``: each packaged fold folder (and ``full/``) linked in, ``thresholds.json`` copied."""
    out = cfg.experiment.output_dir
    out.mkdir(parents=True, exist_ok=True)
    names = [f"fold{fold}" for fold in package_folds(package)]
    if (package / MODELS / FULL_DIR).is_dir():
        names.append(FULL_DIR)
    for name in names:
        link = out / name
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to((package / MODELS / name).resolve(), target_is_directory=True)
    thresholds = package / MODELS / THRESHOLDS_FILE
    if thresholds.is_file():
        shutil.copyfile(thresholds, out / THRESHOLDS_FILE)
    return out


def check_normalisation(package: Path, models: list[Any]) -> None:
    """The models' input normalisation must be the packaged one (a different timm could change it)."""
    expected = json.loads((package / MODELS / NORMALISATION_FILE).read_text())
    for model in models:
        got = model.pretrained_cfg
        if [round(v, 6) for v in got["mean"]] != [round(v, 6) for v in expected["mean"]] or \
                [round(v, 6) for v in got["std"]] != [round(v, 6) for v in expected["std"]]:
            raise WeightsError(f"the model's normalisation {got} differs from the packaged {expected}; install the "
                               "package's timm wheel (it pins the version the models were trained with)")


def run_kernel(package: str | os.PathLike, input_dir: str | os.PathLike, out: str | os.PathLike = "submission.csv",
               work_dir: str | os.PathLike = "segfold_work") -> dict[str, Any]:
    """Predict the test images of ``input_dir`` with the package and write the submission to ``out``.

    Args:
        package: the package folder (``models/``, ``wheels/``, ``infer.py``).
        input_dir: the competition's data folder (its test images and ``sample_submission.csv``).
        out: the submission file to write.
        work_dir: where the test probabilities and the working experiment folder go.

    Returns:
        ``make_submission``'s result, plus ``"out"`` and ``"runtime"``.
    """
    package = Path(package)
    if not Path(input_dir).is_dir():
        raise DataError(f"{input_dir}: no such folder; pass the competition's data folder (the one holding the "
                        "test images and sample_submission.csv)")
    checked = verify_checksums(package / MODELS)
    cfg = kernel_config(package, input_dir, work_dir)
    logger.info("package %s: %d files checked; models %s (folds %s); runtime %s", package, checked, cfg.infer.models,
                cfg.infer.folds, cfg.infer.runtime)
    prepare_work_dir(package, cfg)
    device = resolve_device(cfg.infer.device, key="infer.device")
    models = load_models(cfg, cfg.infer.folds, device, cfg.infer.runtime)[0]
    check_normalisation(package, models)
    del models
    predict_test(cfg)
    result = make_submission(cfg)
    with atomic_path(out) as tmp:
        shutil.copyfile(result["path"], tmp)
    result.update(out=str(out), runtime=cfg.infer.runtime)
    return result
