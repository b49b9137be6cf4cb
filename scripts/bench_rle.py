"""Time segfold's RLE codec against the loop-based codec most competition notebooks copy.

Prints, per kind of mask, the milliseconds per mask of both codecs and their ratio (baseline time
divided by segfold time: above 1 means segfold is faster). No assertions: this is a report.

    python scripts/bench_rle.py [--repeat 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np

from segfold.cli import script_main
from segfold.data import rle


def baseline_encode(mask: np.ndarray) -> str:
    """The notebook encoder: transpose, pad, find changes, join numbers one `str()` at a time."""
    pixels = mask.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def baseline_decode(encoded: str, shape: tuple[int, int]) -> np.ndarray:
    """The notebook decoder: a Python loop that assigns one slice per run."""
    height, width = shape
    values = encoded.split()
    starts = np.asarray(values[0::2], dtype=int) - 1
    lengths = np.asarray(values[1::2], dtype=int)
    flat = np.zeros(height * width, dtype=np.uint8)
    for start, length in zip(starts, lengths, strict=True):
        flat[start : start + length] = 1
    return flat.reshape(width, height).T


def make_masks(kind: str, shape: tuple[int, int], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` masks of one kind: sparse defects, a thresholded noisy prediction, or pure noise."""
    height, width = shape
    masks = []
    for _ in range(count):
        mask = np.zeros(shape, dtype=np.uint8)
        if kind == "sparse":
            for _ in range(rng.integers(1, 4)):
                center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
                axes = (int(rng.integers(10, 120)), int(rng.integers(5, 40)))
                cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        elif kind == "noisy":
            noise = cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), 2.0)
            mask = (noise > np.quantile(noise, 0.6)).astype(np.uint8)
        else:
            mask = (rng.random(shape) < 0.5).astype(np.uint8)
        masks.append(mask)
    return masks


def per_call_ms(func: Callable[[], object], repeat: int) -> float:
    """Best-of-3 mean milliseconds of `func` over `repeat` calls."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            func()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best * 1e3


def bench_case(masks: list[np.ndarray], repeat: int) -> dict[str, float]:
    """Time both codecs on the same masks; check that they agree."""
    shape = masks[0].shape
    strings = [rle.encode(m) for m in masks]
    agree = all(baseline_encode(m) == s for m, s in zip(masks, strings, strict=True))
    agree &= all(np.array_equal(baseline_decode(s, shape), m) for m, s in zip(masks, strings, strict=True))
    n = len(masks)
    cycle = iter(range(10**9))

    def pick() -> int:
        return next(cycle) % n

    return {
        "runs": float(np.mean([s.count(" ") + 1 if s else 0 for s in strings]) / 2),
        "agree": float(agree),
        "enc_base": per_call_ms(lambda: baseline_encode(masks[pick()]), repeat),
        "enc_ours": per_call_ms(lambda: rle.encode(masks[pick()]), repeat),
        "dec_base": per_call_ms(lambda: baseline_decode(strings[pick()], shape), repeat),
        "dec_ours": per_call_ms(lambda: rle.decode(strings[pick()], shape), repeat),
    }


@script_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20, help="calls per timing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    cases = [
        ("sparse defects", "sparse", (256, 1600)),
        ("noisy prediction", "noisy", (256, 1600)),
        ("pure noise", "noise", (256, 1600)),
        ("noisy 1024x1024", "noisy", (1024, 1024)),
    ]
    header = (f"{'mask':<18}{'runs':>9}  {'encode ms base / ours':>22}{'ratio':>7}  "
              f"{'decode ms base / ours':>22}{'ratio':>7}  agree")
    print(header)
    print("-" * len(header))
    for label, kind, shape in cases:
        result = bench_case(make_masks(kind, shape, 8, rng), args.repeat)
        enc = f"{result['enc_base']:9.3f} / {result['enc_ours']:8.3f}"
        dec = f"{result['dec_base']:9.3f} / {result['dec_ours']:8.3f}"
        print(f"{label:<18}{result['runs']:9.0f}  {enc:>22}{result['enc_base'] / result['enc_ours']:6.1f}x  "
              f"{dec:>22}{result['dec_base'] / result['dec_ours']:6.1f}x  {'yes' if result['agree'] else 'NO'}")
    print("ratio = baseline time / segfold time (above 1: segfold is faster)")


if __name__ == "__main__":
    main()
