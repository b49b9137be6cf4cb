"""Threshold search at Severstal size: a synthetic Severstal-shaped OOF, each phase timed, against the notebook loop.

The OOF is generated at the chosen size (default 1,000 plates of 4 x 256 x 1600 uint8, ~86% of the
(image, class) pairs empty, some false-positive blobs) with its true masks as RLE; the search is the real
`tune_thresholds` with the Severstal preset's rules and search settings, run in a process of its own so
that its peak memory is its own. The notebook loop (threshold, drop a mask under the minimum area, Dice per
pair, for every combination of the grid) runs on a sample of the same plates in the same run; its time for
the whole grid is that per-pair cost times the grid's combinations and pairs (an estimate, said as such).

    python scripts/bench_tune.py                          # 1,000 plates
    python scripts/bench_tune.py --images 12568           # the whole competition (a 20.6 GB OOF on disk)
    python scripts/bench_tune.py --images 200 --trials 20 # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from segfold.cli import script_main
from segfold.config import load_config
from segfold.data import rle
from segfold.postprocess.histograms import PhaseTimer
from segfold.postprocess.tune import default_min_areas, tune_thresholds
from segfold.probs import StoreView
from segfold.probs.store import ProbStore

PRESET = Path(__file__).resolve().parents[1] / "configs" / "severstal.yaml"
CHUNK = 16  # plates generated and written at a time


def synthetic_plates(rng: np.random.Generator, count: int, classes: int, height: int, width: int,
                     empty_share: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 probabilities and bool truth, each `(count, classes, height, width)`, shaped like a Severstal OOF.

    Background: a smooth low bump field (most pixels 0-3, a few higher). A defect (in `1 - empty_share` of the pairs):
    1-3 ellipses, predicted as a blurred bump of 150-250. A false positive in a tenth of the empty pairs:
    one blurred ellipse of 40-200 with no truth.
    """
    # a smooth low background (a network's output is smooth, not pixel noise); planes are crops of one bank
    white = rng.exponential(1.0, (2 * height, 2 * width)).astype(np.float32)
    bank = np.clip(cv2.GaussianBlur(white, (0, 0), 3.0) * 1.5 + rng.exponential(0.3, white.shape), 0, 255)
    bank = bank.astype(np.uint8)
    probs = np.empty((count, classes, height, width), dtype=np.uint8)
    truth = np.zeros((count, classes, height, width), dtype=bool)
    for i in range(count):
        for c in range(classes):
            top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
            probs[i, c] = bank[top:top + height, left:left + width]
            defect = rng.random() >= empty_share
            blobs = rng.integers(1, 4) if defect else int(rng.random() < 0.1)
            if not blobs:
                continue
            canvas = np.zeros((height, width), dtype=np.uint8)
            for _ in range(blobs):
                center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
                axes = (int(rng.integers(8, 160)), int(rng.integers(4, 48)))
                cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            amplitude = rng.uniform(150, 250) if defect else rng.uniform(40, 200)
            bump = cv2.GaussianBlur(canvas.astype(np.float32) * amplitude, (0, 0), float(rng.uniform(2, 6)))
            probs[i, c] = np.maximum(probs[i, c], np.clip(bump, 0, 255).astype(np.uint8))
            if defect:
                truth[i, c] = canvas.astype(bool)
    return probs, truth


def generate(folder: Path, images: int, empty_share: float, seed: int) -> dict[str, list[tuple[int, str]]]:
    """Write the synthetic OOF store to `folder/oof/`; returns the true masks as RLE per image."""
    classes, (height, width) = ["1", "2", "3", "4"], (256, 1600)
    ids = [f"{k:06d}.jpg" for k in range(images)]
    store = ProbStore.create(folder / "oof", "oof", ids, classes, height, width)
    rng = np.random.default_rng(seed)
    truth_rle: dict[str, list[tuple[int, str]]] = {}
    for start in range(0, images, CHUNK):
        rows = np.arange(start, min(images, start + CHUNK))
        probs, truth = synthetic_plates(rng, len(rows), len(classes), height, width, empty_share)
        store.write_uint8(rows, probs)
        store.probs.flush()
        for row, masks in zip(rows, truth, strict=True):
            truth_rle[ids[row]] = [(c, rle.encode(m)) for c, m in enumerate(masks) if m.any()]
    store.finalize()
    return truth_rle


def truth_reader(truth_rle: dict[str, list[tuple[int, str]]], classes: int, height: int, width: int):
    """`image_id -> bool (C, H, W)` decoded from RLE, as the training annotations' reader does."""

    def truth(image_id: str) -> np.ndarray:
        mask = np.zeros((classes, height, width), dtype=bool)
        for c, encoded in truth_rle[image_id]:
            mask[c] = rle.decode(encoded, (height, width)).astype(bool)
        return mask

    return truth


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run_search(folder: Path, truth_rle: dict, overrides: list[str]) -> dict:
    """The real search on the stored OOF (in its own process); phases, total seconds, peak memory, scores."""
    before = peak_rss_mb()
    cfg = load_config(PRESET, [f"experiment.output_root={folder}", "experiment.name=bench", *overrides])
    source = StoreView([ProbStore.open(folder / "oof", "oof")])
    _, classes, height, width = source.shape
    timer = PhaseTimer()
    started = time.perf_counter()
    result = tune_thresholds(cfg, source, truth_reader(truth_rle, classes, height, width), timer=timer)
    total = time.perf_counter() - started
    return {"phases": timer.seconds, "total": total, "peak_mb": peak_rss_mb(), "start_mb": before,
            "before": result["score_before"], "after": result["score_after"],
            "thresholds": len(cfg.postprocess.tune.thresholds), "areas": len(default_min_areas(height, width)
                                                                            if cfg.postprocess.tune.min_areas is None
                                                                            else cfg.postprocess.tune.min_areas),
            "trials": cfg.postprocess.tune.optuna_trials, "max_images": cfg.postprocess.tune.max_images}


def notebook_seconds_per_pair(folder: Path, truth_rle: dict, images: int, combos: int, seed: int) -> float:
    """The notebook loop's seconds per (image, class, combination), timed on `images` plates held in memory."""
    source = StoreView([ProbStore.open(folder / "oof", "oof")])
    _, classes, height, width = source.shape
    rows = np.sort(np.random.default_rng(seed).choice(len(source), min(images, len(source)), replace=False))
    probs = source.read_u8(rows)
    read = truth_reader(truth_rle, classes, height, width)
    truths = np.stack([read(source.image_ids[r]) for r in rows])
    grid = [(t, a) for t in (0.3, 0.5, 0.7) for a in (0, 600, 2000)][:combos]
    started = time.perf_counter()
    for threshold, min_area in grid:
        for c in range(classes):
            scores = []
            for i in range(len(rows)):
                mask = probs[i, c] / 255.0 > threshold
                if mask.sum() < min_area:
                    mask[:] = False
                true = truths[i, c]
                total = mask.sum() + true.sum()
                scores.append(1.0 if total == 0 else 2.0 * (mask & true).sum() / total)
            float(np.mean(scores))
    return (time.perf_counter() - started) / (len(grid) * classes * len(rows))


def _in_process(function, *args):
    """`function(*args)` in a fresh process (spawn), so its time and peak memory are its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="plates in the synthetic OOF (default 1000)")
    parser.add_argument("--empty", type=float, default=0.86, help="share of empty (image, class) pairs")
    parser.add_argument("--trials", type=int, default=None, help="Optuna trials per class (default: the preset's)")
    parser.add_argument("--baseline-images", type=int, default=40, help="plates the notebook loop is timed on")
    parser.add_argument("--baseline-combos", type=int, default=2, help="grid combinations the notebook loop times")
    parser.add_argument("--keep", default=None,
                        help="folder to write the OOF to and keep, or to reuse when it holds one of this size "
                             "(default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_tune_"))
    overrides = [] if args.trials is None else [f"postprocess.tune.optuna_trials={args.trials}"]
    try:
        started = time.perf_counter()
        kept = folder / f"truth-{args.images}-{args.empty}-{args.seed}.json"
        if kept.is_file() and (folder / "oof" / "oof.json").is_file():
            truth_rle = {k: [tuple(p) for p in v] for k, v in json.loads(kept.read_text()).items()}
        else:
            truth_rle = _in_process(generate, folder, args.images, args.empty, args.seed)
            if args.keep:
                kept.write_text(json.dumps(truth_rle))
        pairs = sum(len(v) for v in truth_rle.values())
        print(f"generated (or reused) {args.images} plates of 4 x 256 x 1600 "
              f"({args.images * 4 * 256 * 1600 / 1e9:.2f} GB "
              f"uint8, {1 - pairs / (4 * args.images):.1%} empty pairs) in {time.perf_counter() - started:.0f} s")
        r = _in_process(run_search, folder, truth_rle, overrides)
        per_pair = notebook_seconds_per_pair(folder, truth_rle, args.baseline_images, args.baseline_combos, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    phases = r["phases"]
    print(f"\nthreshold search (tune_thresholds, Severstal preset: {r['thresholds']} thresholds x {r['areas']} "
          f"areas, {r['trials']} Optuna trials per class on at most {r['max_images']} plates)")
    for name in ("read", "truth", "histograms", "grid", "refinement", "components"):
        note = " (inside refinement and the final scores)" if name == "components" else ""
        print(f"  {name:<11} {phases.get(name, 0.0):8.1f} s{note}")
    print(f"  {'whole':<11} {r['total']:8.1f} s   OOF score {r['before']:.5f} (preset rules) -> {r['after']:.5f}")
    print(f"  peak memory {r['peak_mb']:.0f} MB (the search process; {r['start_mb']:.0f} MB after imports)")
    combos = r["thresholds"] * r["areas"]
    notebook = per_pair * combos * 4 * args.images
    exact = sum(phases.get(k, 0.0) for k in ("read", "truth", "histograms", "grid"))
    print(f"\nnotebook loop: {per_pair * 1e3:.2f} ms per (plate, class, combination), timed on "
          f"{args.baseline_images} plates x {args.baseline_combos} combinations; for the grid's {combos} "
          f"combinations x 4 classes x {args.images} plates: {notebook:,.0f} s (estimated)")
    print(f"ratio notebook grid / our grid (read + truth + histograms + grid, {exact:.1f} s): x{notebook / exact:,.0f}")


if __name__ == "__main__":
    main()
