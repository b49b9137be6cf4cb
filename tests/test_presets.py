"""Competition presets: each builds its model (tiny encoder) and reads a tiny dataset in its own layout.

The generated datasets follow the Kaggle downloads (file names, CSV headers, RLE flavour, image sizes);
their images are flat with rectangular labels, so every expected area is a product of two sides.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from segfold.config import load_config
from segfold.data import rle

PRESETS = ["severstal", "clouds", "siim", "camvid4"]
TINY = {"efficientnet": "test_efficientnet", "resnet": "test_resnet", "resnext": "test_resnet"}
# sample_submission headers as Kaggle ships them (Severstal re-released: EncodedPixels in the middle)
SAMPLE_HEADERS = {
    "severstal": ["ImageId", "EncodedPixels", "ClassId"],
    "clouds": ["Image_Label", "EncodedPixels"],
    "siim": ["ImageId", "EncodedPixels"],
    "camvid4": ["ImageId", "ClassId", "EncodedPixels"],
}


def _tiny_encoder(name: str) -> str:
    return next(tiny for key, tiny in TINY.items() if key in name)


def _preset(repo_root, name, *overrides):
    cfg = load_config(repo_root / "configs" / f"{name}.yaml")
    return load_config(repo_root / "configs" / f"{name}.yaml",
                       ["model.encoder_weights=null", f"model.encoder_name={_tiny_encoder(cfg.model.encoder_name)}",
                        *overrides])


def test_presets_state_the_competition_facts(repo_root):
    severstal = load_config(repo_root / "configs" / "severstal.yaml")
    assert (severstal.model.arch, severstal.model.encoder_name, severstal.model.encoder_weights) == (
        "UnetPlusPlus", "efficientnet-b4", "imagenet")
    assert severstal.data.image_shape == (256, 1600) and len(severstal.data.classes) == 4
    crop = severstal.data.augment.train[0]
    assert (crop["name"], crop["height"], crop["width"]) == ("CropNonEmptyMaskIfExists", 256, 512)
    assert severstal.data.metric == "dice_pairs"
    assert all(rule.min_area >= 100 for rule in severstal.postprocess.per_class.values())
    clouds = load_config(repo_root / "configs" / "clouds.yaml")
    assert clouds.data.metric_size == (350, 525) and clouds.data.combined_column == "Image_Label"
    assert clouds.data.classes == ["Fish", "Flower", "Gravel", "Sugar"] and clouds.postprocess.at_least_one
    siim = load_config(repo_root / "configs" / "siim.yaml")
    assert siim.data.relative_rle and siim.data.metric == "dice_image"
    assert siim.postprocess.top is not None and siim.postprocess.min_count > 0
    camvid = load_config(repo_root / "configs" / "camvid4.yaml")
    assert camvid.data.root == "../shared/data/camvid4" and camvid.data.mode == "multilabel"
    assert camvid.data.folds.group_regex and camvid.data.image_size is None
    assert (camvid.model.encoder_name, camvid.model.encoder_weights) == ("efficientnet-lite0", "imagenet")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_its_model(repo_root, name):
    from segfold.models import build_model, unpack_outputs

    cfg = _preset(repo_root, name)
    classes = len(cfg.data.classes)
    model = build_model(cfg.model, classes).eval()
    with torch.no_grad():
        out = unpack_outputs(model(torch.rand(1, cfg.model.in_channels, 64, 96)))
    assert out.masks.shape == (1, classes, 64, 96)
    assert (out.labels is not None) == (cfg.model.aux is not False)
    if out.labels is not None:
        assert out.labels.shape == (1, classes)


def _rectangle(shape, index, c):
    """Class c of image `index`: present when (index + c) is even; rows H/4..3H/4, columns (c+1)W/8..(c+2)W/8."""
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    if (index + c) % 2 == 0:
        mask[height // 4: 3 * height // 4, (c + 1) * width // 8: (c + 2) * width // 8] = 1
    return mask


def _write_dataset(cfg, name, root, n_train=4, n_test=2):
    """The preset's Kaggle layout at its native image size; returns (train ids, test ids, shape)."""
    data = cfg.data
    shape = tuple(data.image_shape) if data.image_shape else (32, 48)
    ext = data.image_suffix or ".jpg"
    make_id = (lambda s: s) if data.image_suffix else (lambda s: f"{s}{ext}")
    train_ids = [make_id(f"seq{i % 2}_{i:04d}") for i in range(n_train)]
    test_ids = [make_id(f"test{i}_{i:04d}") for i in range(n_test)]
    for folder, ids in ((data.train_images, train_ids), (data.test_images, test_ids)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            cv2.imwrite(str(root / folder / f"{image_id}{data.image_suffix}"), np.full((*shape, 3), 90, np.uint8))
    encode = rle.encode_relative if data.relative_rle else rle.encode
    rows = []
    for i, image_id in enumerate(train_ids):
        for c, class_name in enumerate(data.classes):
            mask = _rectangle(shape, i, c)
            if data.format == "csv_long" and mask.any():
                rows.append([image_id, class_name, encode(mask)])
            elif data.format == "csv_combined":
                rows.append([f"{image_id}_{class_name}", encode(mask)])
            elif data.format == "csv_instances":
                if not mask.any():
                    rows.append([image_id, " -1"])
                    continue
                left, right = mask.copy(), mask.copy()  # two instances, merged by the reader
                columns = np.flatnonzero(mask.any(axis=0))
                left[:, columns[len(columns) // 2]:] = 0
                right[:, : columns[len(columns) // 2]] = 0
                rows += [[image_id, " " + encode(left)], [image_id, " " + encode(right)]]
    header = {"csv_long": [data.image_column, data.class_column, data.rle_column],
              "csv_combined": [data.combined_column, data.rle_column],
              "csv_instances": [data.image_column, data.rle_column]}[data.format]
    pd.DataFrame(rows, columns=header).to_csv(root / data.train_csv, index=False)
    sample_header = SAMPLE_HEADERS[name]
    empty = "-1" if data.relative_rle else ""
    sample = []
    for image_id in test_ids[::-1]:  # a row order of its own: the submission must keep it
        for class_name in data.classes if "ClassId" in sample_header or "Image_Label" in sample_header else [None]:
            cells = {"ImageId": image_id, "ClassId": class_name, "EncodedPixels": empty,
                     "Image_Label": f"{image_id}_{class_name}"}
            sample.append([cells[column] for column in sample_header])
    pd.DataFrame(sample, columns=sample_header).to_csv(root / data.sample_submission, index=False)
    return train_ids, test_ids, shape


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_reads_its_layout_and_writes_a_submission(repo_root, tmp_path, name):
    from segfold.data.dataset import SegmentationDataset
    from segfold.data.formats import read_test_ids, read_train
    from segfold.data.transforms import build_transforms
    from segfold.probs.store import ProbStore
    from segfold.submit.submission import detect_layout, make_submission, read_csv_strings

    root = tmp_path / "input"
    cfg = _preset(repo_root, name, f"data.root={root}", f"experiment.output_root={tmp_path / 'out'}")
    train_ids, test_ids, shape = _write_dataset(cfg, name, root)
    data = cfg.data

    annotations = read_train(data)
    assert sorted(annotations.image_ids) == sorted(train_ids)
    height, width = shape
    # rows 3H/4 - H/4, columns (c+2)W/8 - (c+1)W/8 (integer division: 263 or 262 wide for W = 2100)
    sides = [(3 * height // 4 - height // 4) * ((c + 2) * width // 8 - (c + 1) * width // 8)
             for c in range(len(data.classes))]
    expected = np.array([[sides[c] if (i + c) % 2 == 0 else 0 for c in range(len(data.classes))]
                         for i in range(len(train_ids))])
    rows = [annotations.index(image_id) for image_id in train_ids]
    np.testing.assert_array_equal(annotations.areas[rows], expected)
    assert read_test_ids(data) == test_ids[::-1]

    item = SegmentationDataset(data, train_ids, annotations=annotations, transforms=build_transforms(data, "train"),
                               mean=[0.5] * 3, std=[0.25] * 3)[0]
    crop = next((t for t in data.augment.train if t["name"] in ("RandomCrop", "CropNonEmptyMaskIfExists")), None)
    size = (crop["height"], crop["width"]) if crop else tuple(data.image_size or shape)
    assert item["image"].shape == (3, *size) and item["mask"].shape[-2:] == size

    # a test store that predicts the true rectangles at the submission resolution, then the submission
    store_shape = tuple(data.metric_size or shape)
    truth = np.stack([np.stack([_rectangle(store_shape, i, c) for c in range(len(data.classes))])
                      for i in range(len(test_ids))])
    store = ProbStore.create(cfg.experiment.output_dir / "test", "test", test_ids, data.classes, *store_shape)
    store.write(np.arange(len(test_ids)), 0.9 * truth)
    store.write_cls(np.arange(len(test_ids)), truth.any(axis=(2, 3)).astype(np.float32))
    store.finalize()
    result = make_submission(cfg)
    written = read_csv_strings(result["path"])
    sample = read_csv_strings(root / data.sample_submission)
    assert list(written.columns) == SAMPLE_HEADERS[name]
    layout = detect_layout(written.columns, relative=data.relative_rle)
    assert written[layout.id_column].tolist() == sample[layout.id_column].tolist()
    for _, row in written.iterrows():
        if layout.kind == "joined":
            image_id, class_name = row[layout.id_column].rsplit("_", 1)
        else:
            image_id = row[layout.id_column]
            class_name = row[layout.class_column] if layout.class_column else data.classes[0]
        decoded = layout.decode(row["EncodedPixels"], store_shape)
        np.testing.assert_array_equal(decoded, truth[test_ids.index(image_id), data.classes.index(class_name)])
