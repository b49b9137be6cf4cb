"""The torch Dataset of a competition: image, mask and per-class presence of each image.

Per item: read the image with OpenCV (RGB, or 1 channel), resize image and mask to
`data.image_size` (masks with nearest neighbour), apply the albumentations pipeline to both, then
normalise with the encoder's mean/std::

    params = segfold.encoders.get_preprocessing_params(cfg.model.encoder_name, cfg.model.encoder_weights)
    ds = SegmentationDataset(cfg.data, ids, annotations=ann, transforms=build_transforms(cfg.data, "train"),
                             mean=params["mean"], std=params["std"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segfold.data.formats import Annotations, image_path
from segfold.data.images import read_image, resize_image, resize_mask
from segfold.data.transforms import build_transforms

if TYPE_CHECKING:
    from segfold.config.data import DataConfig

__all__ = ["SegmentationDataset", "build_transforms", "normalise"]


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) of `(image / 255 - mean) / std` (input range [0, 1])."""
    channels = image.shape[2]
    mean_arr, std_arr = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if channels == 1 and mean_arr.size == 3:
        # a 1-channel model on an RGB-pretrained encoder: the gray value is the channels' average
        mean_arr, std_arr = mean_arr.mean(keepdims=True), std_arr.mean(keepdims=True)
    if mean_arr.size != channels or std_arr.size != channels:
        raise ValueError(f"mean/std have {mean_arr.size}/{std_arr.size} values for a {channels}-channel image")
    scaled = (image.astype(np.float32) * np.float32(1 / 255.0) - mean_arr) / std_arr
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


class SegmentationDataset(Dataset):
    """Images of one split with their masks (when annotations are given).

    Items are dicts: `image` float (in_channels, H, W) normalised; `mask` float (C, H, W) of 0/1
    (binary, multilabel) or long (H, W) class indices with `ignore_index` (multiclass); `presence`
    float (C,) of the classes left in the (augmented) mask; `image_id` str; `orig_size` long (2,), the
    native (height, width). Without annotations (test images) there is no `mask` or `presence`.

    Example::

        ds = SegmentationDataset(cfg.data, ann.image_ids, annotations=ann, mean=[0.5] * 3, std=[0.25] * 3)
        item = ds[0]  # item["image"].shape == (3, H, W)
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        image_ids: Sequence[str],
        *,
        mean: Sequence[float],
        std: Sequence[float],
        annotations: Annotations | None = None,
        folder: str = "train",
        transforms: Any | None = None,
        in_channels: int = 3,
    ) -> None:
        """Args:
        data_cfg: the `data` config section (mode, classes, image_size, paths).
        image_ids: the images of this dataset (e.g. one fold's).
        mean, std: the encoder's normalisation (`segfold.encoders.get_preprocessing_params`).
        annotations: labels from `formats.read_train`; None for unlabelled (test) images.
        folder: "train" or "test": which image folder the ids live in.
        transforms: an albumentations pipeline (`build_transforms(data_cfg, "train")`), or None.
        in_channels: 3 (RGB) or 1 (grayscale).
        """
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3 for image files, got {in_channels}")
        self.data_cfg = data_cfg
        self.image_ids = list(image_ids)
        self.mean, self.std = list(mean), list(std)
        self.annotations = annotations
        self.folder = folder
        self.transforms = transforms
        self.in_channels = in_channels
        if annotations is not None:
            known = set(annotations.image_ids)
            unknown = [i for i in self.image_ids if i not in known]
            if unknown:
                raise KeyError(f"{len(unknown)} image id(s) have no annotation, e.g. {unknown[:3]}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def _load(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """Image (H, W, C) uint8 and mask ((H, W, C) uint8 per class, or (H, W) indices) at training size,
        and the image's native (height, width)."""
        cfg = self.data_cfg
        image = read_image(image_path(cfg, image_id, self.folder), self.in_channels)
        native = (int(image.shape[0]), int(image.shape[1]))
        mask = None
        if self.annotations is not None:
            mask = self.annotations.mask(image_id)
            if mask.ndim == 3:
                mask = np.ascontiguousarray(mask.transpose(1, 2, 0))  # (H, W, C) for albumentations
        if cfg.image_size is not None:
            image = resize_image(image, cfg.image_size)
            if mask is not None:
                mask = resize_mask(mask, cfg.image_size)
        return image, mask, native

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        image, mask, orig_size = self._load(image_id)
        if self.transforms is not None:
            out = self.transforms(image=image, mask=mask) if mask is not None else self.transforms(image=image)
            image, mask = out["image"], out.get("mask")
            if image.ndim == 2:
                image = image[:, :, None]
        item: dict[str, Any] = {
            "image": normalise(image, self.mean, self.std),
            "image_id": image_id,
            "orig_size": torch.as_tensor(np.asarray(orig_size, dtype=np.int64)),
        }
        if mask is None:
            return item
        n_classes = len(self.data_cfg.classes)
        if self.data_cfg.mode == "multiclass":
            labels = np.asarray(mask).astype(np.int64)
            counts = np.bincount(labels[labels < n_classes].ravel(), minlength=n_classes)
            item["mask"] = torch.from_numpy(labels)
            item["presence"] = torch.from_numpy((counts > 0).astype(np.float32))
        else:
            channels = np.asarray(mask)
            channels = channels[:, :, None] if channels.ndim == 2 else channels
            channels = np.ascontiguousarray(channels.transpose(2, 0, 1)).astype(np.float32)  # (C, H, W)
            item["mask"] = torch.from_numpy(channels)
            item["presence"] = torch.from_numpy(channels.reshape(n_classes, -1).max(axis=1))
        return item
