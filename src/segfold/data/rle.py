"""Run-length encoding of binary masks, as Kaggle segmentation competitions write them.

Two conventions:

- absolute (Severstal, Clouds, CamVid-4): pairs of `start length`, `start` 1-indexed; pixels are
  numbered top to bottom, then left to right (column-major, `order="F"`); an empty mask is `""`.
- relative (SIIM-ACR Pneumothorax): each start is the number of pixels skipped after the end of the
  previous run, the first one counted from pixel 0; an empty mask is `"-1"`.

Both directions are vectorised: strings are parsed with one numpy call after a byte check, masks are
filled from the covered pixel indices (no Python loop over runs), and numbers are formatted by a
lookup table of three-digit chunks instead of one `str()` per number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from segfold.errors import DataError

Order = Literal["F", "C"]

_DIGIT_OR_SPACE = np.zeros(256, dtype=bool)
_DIGIT_OR_SPACE[ord("0") : ord("9") + 1] = True
_DIGIT_OR_SPACE[[9, 10, 11, 12, 13, 32]] = True  # \t \n \v \f \r and space
# 0..999 as three ASCII digits plus a spare byte (NUL, or the separator for a number's last chunk),
# each packed into one uint32 so a lookup is a 1-D take
_DIGITS = np.array([list(f"{i:03d} ".encode("ascii")) for i in range(1000)], dtype=np.uint8)  # (1000, 4)
_CHUNK_WITH_SPACE = _DIGITS.view(np.uint32).ravel().copy()
_DIGITS[:, 3] = 0
_CHUNK = _DIGITS.view(np.uint32).ravel().copy()


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_order(order: str) -> None:
    if order not in ("F", "C"):
        raise ValueError(f"order must be 'F' (column-major, the Kaggle convention) or 'C' (row-major), got {order!r}")


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(side) <= 0 for side in shape):
        raise ValueError(f"shape must be (height, width) with positive sides, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _parse_numbers(rle: str) -> np.ndarray:
    """The whitespace-separated non-negative integers of `rle` as int64; DataError names a bad token."""
    if not isinstance(rle, str):
        raise DataError(f"RLE must be a string, got {type(rle).__name__} {rle!r}")
    text = rle.strip()
    if not text:
        return np.zeros(0, dtype=np.int64)
    try:
        raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        ascii_ok = True
    except UnicodeEncodeError:
        ascii_ok = False
    if not ascii_ok or not _DIGIT_OR_SPACE[raw].all():
        bad = next(tok for tok in text.split() if not (tok.isascii() and tok.isdigit()))
        raise DataError(f"RLE has a non-numeric token {bad!r} (expected non-negative integers): {_preview(rle)}")
    # NOTE: values beyond int64 saturate to its maximum, which the bounds check below reports.
    return np.fromstring(text, dtype=np.int64, sep=" ")


def _reject_negative(rle: str) -> None:
    """Relative RLE: a negative number other than a lone `-1` is an error of its own."""
    negative = [tok for tok in rle.split() if tok.startswith("-") and tok[1:].isdigit()]
    if negative:
        raise DataError(f"relative RLE has a negative value {negative[0]} (only a lone '-1' means an empty mask): "
                        f"{_preview(rle)}")


def _runs_from_pairs(values: np.ndarray, rle: str, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """0-based absolute starts and lengths of each pair, checked for sign and order."""
    if values.size % 2:
        raise DataError(f"RLE has an odd number of values ({values.size}); it must be start/length pairs: "
                        f"{_preview(rle)}")
    starts, lengths = values[0::2], values[1::2]
    bad = np.flatnonzero(lengths <= 0)
    if bad.size:
        raise DataError(f"RLE run {bad[0] + 1} has length {lengths[bad[0]]} (lengths must be >= 1): {_preview(rle)}")
    if relative:
        # start_i = gap_i + end_{i-1}; the first gap is counted from pixel 0
        ends = np.cumsum(starts + lengths)
        return ends - lengths, lengths
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        raise DataError(f"RLE run {bad[0] + 1} starts at {starts[bad[0]]} (starts are 1-indexed, so >= 1): "
                        f"{_preview(rle)}")
    starts = starts - 1
    if starts.size > 1:
        backwards = np.flatnonzero(starts[1:] < starts[:-1])
        if backwards.size:
            i = backwards[0] + 1
            raise DataError(f"RLE runs are unsorted: run {i + 1} starts at {starts[i] + 1}, before run {i} "
                            f"(starts must increase): {_preview(rle)}")
        overlap = np.flatnonzero(starts[1:] < starts[:-1] + lengths[:-1])
        if overlap.size:
            i = overlap[0] + 1
            raise DataError(f"RLE runs overlap: run {i + 1} starts at {starts[i] + 1}, inside run {i} "
                            f"({starts[i - 1] + 1}..{starts[i - 1] + lengths[i - 1]}): {_preview(rle)}")
    return starts, lengths


def _check_bounds(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], rle: str) -> None:
    n_pixels = shape[0] * shape[1]
    if starts.size and starts[-1] + lengths[-1] > n_pixels:
        raise DataError(f"RLE run past the end of the image: run {starts.size} ends at pixel "
                        f"{starts[-1] + lengths[-1]} but a {shape[0]}x{shape[1]} image has {n_pixels} pixels "
                        f"(wrong image size or row/column order?): {_preview(rle)}")


def _fill(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], order: Order) -> np.ndarray:
    """A C-contiguous uint8 (H, W) mask with the runs (0-based starts in `order` numbering) set to 1."""
    height, width = shape
    flat = np.zeros(height * width, dtype=np.uint8)
    total = int(lengths.sum())
    if total:
        # covered pixel k of run r sits at starts[r] + (k - first covered index of run r)
        offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        index = np.arange(total, dtype=np.int64) + offsets
        if order == "F" and total > flat.size // 8:
            # dense masks: fill in column-major order, then transpose once
            flat[index] = 1
            return np.ascontiguousarray(flat.reshape(width, height).T)
        if order == "F":
            column, row = np.divmod(index, height)
            index = row * width + column
        flat[index] = 1
    return flat.reshape(height, width)


def _boundaries(mask: np.ndarray, order: Order) -> tuple[np.ndarray, np.ndarray]:
    """0-based starts and exclusive ends of the runs of non-zero pixels of a 2-D mask."""
    if mask.ndim != 2:
        raise ValueError(f"RLE encodes one 2-D mask (height, width), got an array of shape {mask.shape}")
    flat = np.ravel(mask, order=order)
    if flat.dtype != np.bool_:
        flat = flat != 0
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = [change]
    if flat.size and flat[0]:
        edges.insert(0, np.zeros(1, dtype=np.int64))
    if flat.size and flat[-1]:
        edges.append(np.array([flat.size], dtype=np.int64))
    bounds = np.concatenate(edges) if len(edges) > 1 else change
    return bounds[0::2].astype(np.int64), bounds[1::2].astype(np.int64)


def _keep_patterns(n_chunks: int) -> np.ndarray:
    """Row d: which bytes of a number written in `n_chunks` 4-byte chunks to keep when it has d digits.

    A chunk is three digits and one spare byte; the spare byte of the last chunk holds the separator.
    """
    width = 3 * n_chunks
    patterns = np.zeros((width + 1, n_chunks, 4), dtype=bool)
    for n_digits in range(1, width + 1):
        for chunk in range(n_chunks):
            for j in range(3):
                patterns[n_digits, chunk, j] = (n_chunks - 1 - chunk) * 3 + (2 - j) < n_digits
        patterns[n_digits, n_chunks - 1, 3] = True
    return patterns.reshape(width + 1, 4 * n_chunks)


def format_numbers(values: np.ndarray) -> str:
    """Non-negative integers as one space-separated string (vectorised `" ".join(map(str, values))`)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return ""
    if values.min() < 0:
        raise ValueError("format_numbers writes non-negative integers only")
    n_chunks = max(1, (len(str(int(values.max()))) + 2) // 3)
    chunks = np.empty((values.size, n_chunks), dtype=np.uint32)  # (N, chunks) of 4 bytes each
    rest = values
    for chunk in range(n_chunks - 1, -1, -1):
        quotient = rest // 1000
        table = _CHUNK_WITH_SPACE if chunk == n_chunks - 1 else _CHUNK
        chunks[:, chunk] = np.take(table, rest - quotient * 1000)
        rest = quotient
    chars = chunks.view(np.uint8).reshape(values.size, 4 * n_chunks)
    n_digits = np.ones(values.size, dtype=np.intp)
    for power in range(1, 3 * n_chunks):
        n_digits += values >= 10**power
    # the keep-pattern of each row, gathered as one record of 4 * n_chunks bytes
    record = np.dtype((np.void, 4 * n_chunks))
    keep = np.take(_keep_patterns(n_chunks).view(record).ravel(), n_digits).view(bool).reshape(chars.shape)
    return chars[keep][:-1].tobytes().decode("ascii")


def _interleave(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    pairs = np.empty(2 * first.size, dtype=np.int64)
    pairs[0::2], pairs[1::2] = first, second
    return pairs


def encode(mask: np.ndarray, order: Order = "F") -> str:
    """Encode a 2-D mask (non-zero = foreground) as Kaggle `start length` pairs.

    Args:
        mask: (H, W) array; any non-zero value counts as foreground.
        order: "F" numbers pixels top to bottom, then left to right (the Kaggle convention);
            "C" numbers them left to right, then top to bottom.

    Returns:
        The 1-indexed `start length` pairs separated by spaces; `""` for an empty mask.
    """
    _check_order(order)
    starts, ends = _boundaries(np.asarray(mask), order)
    return format_numbers(_interleave(starts + 1, ends - starts))


def decode(rle: str, shape: Sequence[int], order: Order = "F") -> np.ndarray:
    """Decode Kaggle `start length` pairs into a uint8 mask of 0 and 1.

    Args:
        rle: the EncodedPixels string (`""` or whitespace for an empty mask).
        shape: (height, width) of the image the string was written for.
        order: "F" (column-major, the Kaggle convention) or "C" (row-major).

    Returns:
        A C-contiguous uint8 array of `shape`.

    Raises:
        DataError: an odd number of values, a non-numeric token, a length <= 0, a start < 1,
            unsorted or overlapping runs, or a run past the end of the image.
    """
    _check_order(order)
    shape = _check_shape(shape)
    starts, lengths = _runs_from_pairs(_parse_numbers(rle), rle, relative=False)
    _check_bounds(starts, lengths, shape, rle)
    return _fill(starts, lengths, shape, order)


def encode_relative(mask: np.ndarray, order: Order = "F") -> str:
    """Encode a 2-D mask in the SIIM-ACR relative form: `gap length` pairs, `"-1"` when empty.

    Each gap is the number of pixels skipped after the end of the previous run (the first one is
    counted from pixel 0, so it equals the 0-indexed start).
    """
    _check_order(order)
    starts, ends = _boundaries(np.asarray(mask), order)
    if starts.size == 0:
        return "-1"
    gaps = starts - np.concatenate(([0], ends[:-1]))
    return format_numbers(_interleave(gaps, ends - starts))


def decode_relative(rle: str, shape: Sequence[int], order: Order = "F") -> np.ndarray:
    """Decode the SIIM-ACR relative form (`"-1"` or `""` is an empty mask) into a uint8 mask of 0 and 1.

    Raises:
        DataError: as `decode`, for a negative gap, a length <= 0 or a run past the end of the image.
    """
    _check_order(order)
    shape = _check_shape(shape)
    if not isinstance(rle, str):
        raise DataError(f"RLE must be a string, got {type(rle).__name__} {rle!r}")
    if rle.strip() == "-1":
        return np.zeros(shape, dtype=np.uint8)
    _reject_negative(rle)
    starts, lengths = _runs_from_pairs(_parse_numbers(rle), rle, relative=True)
    _check_bounds(starts, lengths, shape, rle)
    return _fill(starts, lengths, shape, order)


def validate(rle: str, shape: Sequence[int], relative: bool = False) -> int:
    """Check an encoded mask against an image size without decoding it; returns its area in pixels.

    Raises:
        DataError: for every malformation `decode` / `decode_relative` reject.
    """
    shape = _check_shape(shape)
    if not isinstance(rle, str):
        raise DataError(f"RLE must be a string, got {type(rle).__name__} {rle!r}")
    if relative:
        if rle.strip() == "-1":
            return 0
        _reject_negative(rle)
    starts, lengths = _runs_from_pairs(_parse_numbers(rle), rle, relative=relative)
    _check_bounds(starts, lengths, shape, rle)
    return int(lengths.sum())
