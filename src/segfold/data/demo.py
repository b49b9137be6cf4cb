"""The demo competition: a small synthetic steel-defect-like dataset, written in seconds, deterministic.

Layout (the Severstal re-release, `csv_long`)::

    input/demo/train_images/*.jpg   128x256 textured gray plates
    input/demo/test_images/*.jpg
    input/demo/train.csv            ImageId,ClassId,EncodedPixels (only non-empty pairs)
    input/demo/sample_submission.csv  every (test image, class) pair, empty EncodedPixels
    input/demo/test_labels.csv      the test truth, for the demo score
    input/demo/DEMO.json            how it was made

Four classes, each in about half of the images, with their own colour and shape: 1 red scratches
(thin slanted lines), 2 blue pits (clusters of small dots), 3 green striped patches (large blobs),
4 yellow bands (vertical stripes). Faint, small, unlabelled look-alikes of every class are scattered
on top, so a model half-learns them: probability thresholds and minimum areas change the score.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from segfold.data import rle
from segfold.errors import DataError

if TYPE_CHECKING:
    from segfold.config.data import DataConfig

CLASSES = ["1", "2", "3", "4"]
COLOURS = np.array([[200, 50, 40], [40, 60, 180], [50, 170, 60], [215, 200, 50]], dtype=np.float32)  # RGB
HEIGHT, WIDTH = 128, 256
VERSION = 1
MARKER = "DEMO.json"


def _background(rng: np.random.Generator) -> np.ndarray:
    """A textured gray plate: rolling streaks along the width and fine grain, float RGB (H, W, 3)."""
    base = rng.uniform(95, 145)
    streaks = cv2.resize(rng.normal(0, 1, (HEIGHT, WIDTH // 32)).astype(np.float32), (WIDTH, HEIGHT),
                         interpolation=cv2.INTER_LINEAR)
    grain = rng.normal(0, 5, (HEIGHT, WIDTH)).astype(np.float32)
    gray = base + 12 * streaks + grain
    tint = rng.uniform(-6, 6, 3).astype(np.float32)
    return gray[:, :, None] + tint


def _shape_mask(class_index: int, rng: np.random.Generator, faint: bool) -> np.ndarray:
    """A uint8 (H, W) 0/1 mask of one defect of a class (small look-alikes when `faint`)."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    x, y = int(rng.integers(10, WIDTH - 10)), int(rng.integers(10, HEIGHT - 10))
    if class_index == 0:  # scratches: thin slanted lines
        for _ in range(1 if faint else int(rng.integers(1, 4))):
            length = rng.uniform(6, 14) if faint else rng.uniform(40, 110)
            angle = rng.uniform(-0.6, 0.6)
            dx, dy = length * np.cos(angle) / 2, length * np.sin(angle) / 2
            x0, y0 = x + rng.uniform(-20, 20), y + rng.uniform(-15, 15)
            cv2.line(mask, (int(x0 - dx), int(y0 - dy)), (int(x0 + dx), int(y0 + dy)), 1,
                     1 if faint else int(rng.integers(2, 5)))
    elif class_index == 1:  # pits: a cluster of small dots
        for _ in range(int(rng.integers(1, 3) if faint else rng.integers(4, 10))):
            cx, cy = x + rng.normal(0, 12), y + rng.normal(0, 8)
            cv2.circle(mask, (int(cx), int(cy)), int(rng.integers(1, 3) if faint else rng.integers(3, 6)), 1, -1)
    elif class_index == 2:  # patches: large irregular blobs
        for _ in range(1 if faint else int(rng.integers(2, 4))):
            axes = (int(rng.integers(3, 6)), int(rng.integers(2, 5))) if faint else \
                (int(rng.integers(15, 35)), int(rng.integers(10, 25)))
            center = (int(x + rng.uniform(-15, 15)), int(y + rng.uniform(-10, 10)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:  # bands: vertical stripes over most of the height
        half = int(rng.integers(1, 3) if faint else rng.integers(5, 13))
        top, bottom = (y - 6, y + 6) if faint else (int(rng.integers(0, 30)), int(rng.integers(HEIGHT - 30, HEIGHT)))
        mask[max(top, 0) : bottom, max(x - half, 0) : x + half] = 1
    return mask


def _paint(image: np.ndarray, mask: np.ndarray, class_index: int, alpha: float, rng: np.random.Generator) -> None:
    """Blend a class's colour and texture into `image` where `mask` is set."""
    colour = COLOURS[class_index] + rng.uniform(-15, 15, 3).astype(np.float32)
    texture = np.ones((HEIGHT, WIDTH), dtype=np.float32)
    if class_index == 2:  # diagonal stripes
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
        texture = 0.75 + 0.25 * np.sign(np.sin((xx + yy) * 0.6)).astype(np.float32)
    elif class_index == 3:  # vertical gradient
        texture = np.linspace(0.7, 1.1, HEIGHT, dtype=np.float32)[:, None].repeat(WIDTH, axis=1)
    weight = (alpha * mask.astype(np.float32))[:, :, None]
    image *= 1 - weight
    image += weight * colour * texture[:, :, None]


def make_image(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One demo image: uint8 RGB (H, W, 3) and its uint8 (4, H, W) 0/1 masks.

    Each image has its own generator (seed, split, index), so a smaller dataset is a prefix of a larger one.
    """
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])
    image = _background(rng)
    masks = np.zeros((len(CLASSES), HEIGHT, WIDTH), dtype=np.uint8)
    for c in range(len(CLASSES)):
        if rng.random() < 0.5:
            masks[c] = _shape_mask(c, rng, faint=False)
            _paint(image, masks[c], c, float(rng.uniform(0.65, 0.9)), rng)
    for _ in range(int(rng.integers(1, 5))):  # faint, small, unlabelled look-alikes
        c = int(rng.integers(0, len(CLASSES)))
        _paint(image, _shape_mask(c, rng, faint=True), c, float(rng.uniform(0.2, 0.45)), rng)
    return np.clip(image, 0, 255).round().astype(np.uint8), masks


def _write_split(folder: Path, seed: int, split: str, count: int) -> list[dict[str, str]]:
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        image_id = f"{split}_{i:04d}.jpg"
        image, masks = make_image(seed, split, i)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise DataError(f"OpenCV could not encode demo image {image_id}")
        (folder / image_id).write_bytes(data.tobytes())
        for c, name in enumerate(CLASSES):
            if masks[c].any():
                rows.append({"ImageId": image_id, "ClassId": name, "EncodedPixels": rle.encode(masks[c])})
    return rows


def make_demo_data(root: str | Path, seed: int = 0, n_train: int = 300, n_test: int = 100) -> Path:
    """Write the demo competition to `root` (replacing an earlier demo there, never other data).

    The folder is built under a temporary name beside `root` and renamed into place when complete.

    Raises:
        DataError: `root` exists, is not empty and is not a demo folder.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise DataError(f"{root} holds other files and no {MARKER}: refusing to write the demo data over it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        train_rows = _write_split(tmp / "train_images", seed, "train", n_train)
        test_rows = _write_split(tmp / "test_images", seed, "test", n_test)
        columns = ["ImageId", "ClassId", "EncodedPixels"]
        pd.DataFrame(train_rows, columns=columns).to_csv(tmp / "train.csv", index=False)
        pd.DataFrame(test_rows, columns=columns).to_csv(tmp / "test_labels.csv", index=False)
        pairs = [{"ImageId": f"test_{i:04d}.jpg", "ClassId": name, "EncodedPixels": ""}
                 for i in range(n_test) for name in CLASSES]
        pd.DataFrame(pairs, columns=columns).to_csv(tmp / "sample_submission.csv", index=False)
        info = {"version": VERSION, "seed": seed, "n_train": n_train, "n_test": n_test, "classes": CLASSES,
                "height": HEIGHT, "width": WIDTH}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        try:
            tmp.rename(root)
        except OSError:
            if not (root / MARKER).is_file():
                raise
            shutil.rmtree(tmp)  # another process wrote the same demo first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def is_demo_root(data_cfg: DataConfig) -> bool:
    """Whether the config points at a demo folder (one named `demo`, in the demo's layout)."""
    return data_cfg.root_path.name == "demo" and data_cfg.format == "csv_long"


def ensure_demo_data(data_cfg: DataConfig, seed: int = 0) -> bool:
    """Write the demo competition on first use; returns True when it was written now.

    Only a root named `demo` in the `csv_long` layout is ever written, and only while it lacks a
    `train.csv`; any other config is left alone (its reader reports missing files).
    """
    root = data_cfg.root_path
    if not is_demo_root(data_cfg) or (root / data_cfg.train_csv).is_file():
        return False
    make_demo_data(root, seed=seed)
    return True
