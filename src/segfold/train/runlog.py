"""What a run leaves to read: `metrics.csv`, TensorBoard events, `curves.png` and `run_info.json`."""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from segfold.io import atomic_path, write_json_atomic, write_text_atomic

RUN_INFO_PACKAGES = (
    "torch", "torchvision", "timm", "albumentations", "opencv-python-headless", "numpy", "pandas",
    "scikit-learn", "ttach", "optuna", "pydantic", "segfold",
)  # fmt: skip


class MetricsLogger:
    """One row per epoch into `metrics.csv` (rewritten atomically), TensorBoard and `curves.png`.

    A resumed run keeps the rows of the epochs its checkpoint holds (`resumed_epochs`) and drops any
    later ones, so no epoch is logged twice; a fresh run (0) starts a new file. A NaN (an epoch without
    validation) is an empty cell, no TensorBoard point and a gap the plotted line steps over.

    Args:
        folder: the fold's output folder.
        resumed_epochs: epochs completed by the checkpoint the run resumes from (0 for a fresh run).
        tensorboard: whether to write TensorBoard events to `folder/tensorboard`.
    """

    def __init__(self, folder: str | os.PathLike, resumed_epochs: int = 0, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.csv_path = self.folder / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if resumed_epochs > 0 and self.csv_path.is_file():
            with self.csv_path.open(newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= resumed_epochs]
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars for one optimizer step (`train/loss`, `train/lr`, ...)."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Record one epoch's metrics (must hold `epoch`) and refresh the CSV and the plot."""
        self.rows.append(dict(metrics))
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(value):
                    self.writer.add_scalar(f"epoch/{key}", value, int(metrics["epoch"]))
            self.writer.flush()
        self._write_csv()
        plot_curves(self.rows, self.folder / "curves.png")

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns.extend(key for key in row if key not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({key: _fmt(row.get(key)) for key in columns})
        write_text_atomic(self.csv_path, buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def curve(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """The epochs and values of one `metrics.csv` column, without the epochs where it is empty or NaN."""
    points = [(int(row["epoch"]), _float(row.get(key))) for row in rows]
    kept = [(epoch, value) for epoch, value in points if not math.isnan(value)]
    return [epoch for epoch, _ in kept], [value for _, value in kept]


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Plot train / valid loss and the validation score(s) per epoch into a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    loss_axis, score_axis = figure.subplots(1, 2)
    for axis, key, style in ((loss_axis, "train_loss", "-o"), (loss_axis, "valid_loss", "-s"),
                             (loss_axis, "ema_valid_loss", "--s"), (score_axis, "score", "-o"),
                             (score_axis, "ema_score", "--o")):
        epochs, values = curve(rows, key)
        if epochs:
            axis.plot(epochs, values, style, label=key)
    loss_axis.set(title="loss", xlabel="epoch")
    score_axis.set(title="validation score", xlabel="epoch")
    for axis in (loss_axis, score_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp)


def git_commit(folder: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit (with `-dirty` when it has uncommitted changes), or None outside git."""
    cwd = str(folder) if folder is not None else str(Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def package_versions(names: tuple[str, ...] = RUN_INFO_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_info(path: str | os.PathLike, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `run_info.json`: git commit, package versions, Python, platform, command line, plus `extra`."""
    import torch

    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        **(extra or {}),
    }
    write_json_atomic(path, info)
    return info
