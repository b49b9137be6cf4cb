"""Image and mask files: reading, header sizes, folder listings, and name lists for error messages."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from segfold.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataWarning(UserWarning):
    """Something in the data that is not fatal but that a user should know about (with the names)."""


def name_list(names: Sequence[str], limit: int = 8) -> str:
    """`a, b, c` or `a, b, ... (and 12 more)`: names for a message, kept short."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown} ... (and {len(names) - limit} more)"


def warn_data(message: str) -> None:
    """Emit a DataWarning that points at the caller's caller (the user's call into the reader)."""
    warnings.warn(message, DataWarning, stacklevel=3)


def list_images(folder: Path, suffix: str = "") -> list[str]:
    """Image ids of the image files in `folder` (sorted): the file names, less `suffix` when it is set."""
    if not folder.is_dir():
        return []
    ids = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(IMAGE_EXTENSIONS) or name.startswith("."):
            continue
        if suffix:
            if not name.endswith(suffix):
                continue
            name = name[: -len(suffix)]
        ids.append(name)
    return ids


def header_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file from its header, or None when it cannot be read as an image."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return height, width


_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"
_TAIL_BYTES = 64


def is_truncated(path: Path) -> bool:
    """Whether a JPEG or PNG file stops before its end marker (an interrupted download or copy).

    The end marker (JPEG EOI, PNG IEND) is looked for in the last bytes; a file without it is decoded
    in full with errors surfaced (some writers pad or append data after the marker), so only a file
    that really cannot be decoded to its end counts. Other formats are not checked.
    """
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return False
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(handle.tell() - _TAIL_BYTES, 0))
        tail = handle.read()
    marker = _PNG_END if suffix == ".png" else _JPEG_END
    if marker in tail.rstrip(b"\x00\r\n "):
        return False
    try:
        with Image.open(path) as image:
            image.load()  # raises "image file is truncated" (PIL's LOAD_TRUNCATED_IMAGES is off by default)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return True
    return False


def image_shapes(paths: Sequence[Path], names: Sequence[str], where: str) -> np.ndarray:
    """(N, 2) header sizes of image files; DataError listing the missing, unreadable and truncated ones."""
    missing = [name for name, path in zip(names, paths, strict=True) if not path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in {where} are missing from {paths[0].parent}: "
                        f"{name_list(missing)} (copy them there, or fix the image folder in data.train_images / "
                        "data.test_images and data.image_suffix)")
    shapes = np.zeros((len(paths), 2), dtype=np.int64)
    unreadable = []
    for i, (name, path) in enumerate(zip(names, paths, strict=True)):
        shape = header_shape(path)
        if shape is None:
            unreadable.append(name)
        else:
            shapes[i] = shape
    if unreadable:
        raise DataError(f"{len(unreadable)} image file(s) in {paths[0].parent} cannot be read as images: "
                        f"{name_list(unreadable)} (re-download or delete them and their rows)")
    check_complete(paths, names)
    return shapes


def check_complete(paths: Sequence[Path], names: Sequence[str]) -> None:
    """DataError listing the image files that are truncated (they would decode partly grey)."""
    truncated = [name for name, path in zip(names, paths, strict=True) if is_truncated(path)]
    if truncated:
        raise DataError(f"{len(truncated)} image file(s) in {paths[0].parent} are truncated (they end before the "
                        f"image data does, e.g. an interrupted download): {name_list(truncated)} (re-download them, "
                        "or delete them and their rows)")


def check_sizes(names: Sequence[str], shapes: np.ndarray, expected: tuple[int, int], what: str) -> None:
    """DataError listing the items whose (H, W) differs from `expected`."""
    wrong = [f"{name} ({h}x{w})" for name, (h, w) in zip(names, shapes, strict=True) if (h, w) != tuple(expected)]
    if wrong:
        raise DataError(f"{len(wrong)} {what} are not {expected[0]}x{expected[1]} as expected: {name_list(wrong)}")


def read_image(path: str | os.PathLike, in_channels: int = 3) -> np.ndarray:
    """Read an image with OpenCV as uint8 RGB (H, W, 3), or (H, W, 1) gray when `in_channels` is 1.

    Grayscale-looking files are read as three equal channels, so ImageNet encoders see their usual
    input; 16-bit files are scaled down to 8 bits.
    """
    flag = cv2.IMREAD_GRAYSCALE if in_channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        reason = "does not exist" if not Path(path).is_file() else "cannot be decoded (corrupt or not an image)"
        raise DataError(f"image {path} {reason}")
    if image.dtype != np.uint8:
        image = (image / (np.iinfo(image.dtype).max / 255.0)).round().astype(np.uint8)
    if in_channels == 1:
        return image[:, :, None]
    if in_channels != 3:
        raise ValueError(f"in_channels must be 1 or 3 for image files, got {in_channels}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel mask PNG as its raw values (palette PNGs give their indices); DataError otherwise."""
    try:
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA", "CMYK"):
                raise DataError(f"mask {path} is a {image.mode} image; masks must be single-channel "
                                "(0/255 binary or an index map)")
            values = np.array(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"mask {path} cannot be read: {exc}") from None
    if values.dtype == np.bool_:
        values = values.astype(np.uint8)
    return values


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) label array to `size` (height, width) with nearest neighbour."""
    height, width = size
    if mask.shape[:2] == (height, width):
        return mask
    out = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return out[:, :, None] if mask.ndim == 3 and out.ndim == 2 else out


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) image to `size` (height, width): area filter to shrink, linear to enlarge."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def unique_in_order(values: Iterable[str]) -> list[str]:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))
