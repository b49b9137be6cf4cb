"""Data layer: readers of every layout on tiny files, the dataset, augmentations, the sampler, the demo."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from segfold.config.data import DataConfig
from segfold.data import demo, formats
from segfold.data.dataset import SegmentationDataset, normalise
from segfold.data.images import DataWarning
from segfold.data.sampler import PositiveShareSampler
from segfold.data.transforms import build_pipeline, build_transforms
from segfold.errors import ConfigError, DataError

H, W = 4, 5
# Hand-decoded masks of the tiny sets below (column-major, 1-indexed pixel numbers; a column is 4 pixels):
# "1 3"  -> pixels 1..3  = column 0, rows 0..2
# "6 2"  -> pixels 6..7  = column 1, rows 1..2
# "17 4" -> pixels 17..20 = column 4, rows 0..3
A1 = np.zeros((H, W), np.uint8)
A1[0:3, 0] = 1
A2 = np.zeros((H, W), np.uint8)
A2[1:3, 1] = 1
B2 = np.zeros((H, W), np.uint8)
B2[:, 4] = 1


def write_images(folder: Path, names: list[str], shape=(H, W), value: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.full((*shape, 3), value, np.uint8))


def long_set(root: Path, rows: str) -> DataConfig:
    """Three images a, b, c (c has no row); train.csv with `rows`."""
    write_images(root / "train_images", ["a.png", "b.png", "c.png"])
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n" + rows)
    return DataConfig(root=str(root), classes=["1", "2"], test_labels=None)


GOOD_ROWS = "a.png,1,1 3\na.png,2,6 2\nb.png,2,17 4\n"


def test_csv_long_reads_masks_and_empty_images(tmp_path):
    ann = formats.read_train(long_set(tmp_path, GOOD_ROWS))
    assert ann.image_ids == ["a.png", "b.png", "c.png"]  # c has no row: an empty image, not a missing one
    np.testing.assert_array_equal(ann.presence, [[True, True], [False, True], [False, False]])
    np.testing.assert_array_equal(ann.areas, [[3, 2], [0, 4], [0, 0]])
    np.testing.assert_array_equal(ann.mask("a.png"), np.stack([A1, A2]))
    np.testing.assert_array_equal(ann.mask("b.png"), np.stack([np.zeros_like(B2), B2]))
    assert ann.mask("c.png").shape == (2, H, W) and ann.mask("c.png").sum() == 0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a.png,1,1 3\nb.png,2,17 5\n", r"train.csv line 3 \(ImageId b.png, class 2\): RLE run past the end"),
        ("a.png,1,1 x\n", r"line 2 \(ImageId a.png, class 1\): RLE has a non-numeric token 'x'"),
        ("a.png,1,3 1 1 1\n", r"line 2 .*unsorted"),
        ("a.png,7,1 3\n", r"line 2 \(ImageId a.png\): class '7' is not one of data.classes"),
        ("a.png,1,1 3\na.png,1,6 2\n", r"lines \[2, 3\]: image a.png class '1' has more than one row"),
        ("a.png,1,1 3\nzz.png,1,1 1\n", r"missing from .*train_images: zz.png"),
    ],
)
def test_csv_long_errors_name_the_row(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        formats.read_train(long_set(tmp_path, rows))


def test_unreadable_image_and_wrong_size_are_listed(tmp_path):
    cfg = long_set(tmp_path, GOOD_ROWS)
    (tmp_path / "train_images" / "b.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot be read as images: b.png"):
        formats.read_train(cfg)
    write_images(tmp_path / "train_images", ["b.png"], shape=(6, 5))
    with pytest.raises(DataError, match=r"not 4x5 as expected: b.png \(6x5\)"):
        formats.read_train(cfg.model_copy(update={"image_shape": (4, 5)}))


def test_missing_csv_and_columns(tmp_path):
    cfg = long_set(tmp_path, GOOD_ROWS)
    with pytest.raises(DataError, match=r"missing column\(s\) \['Label'\]"):
        formats.read_train(cfg.model_copy(update={"class_column": "Label"}))
    with pytest.raises(DataError, match="CSV file not found"):
        formats.read_train(cfg.model_copy(update={"train_csv": "nope.csv"}))


def test_csv_combined_severstal_original_warns_about_unlisted_images(tmp_path):
    write_images(tmp_path / "train_images", ["a.png", "b.png", "c.png"])
    (tmp_path / "train.csv").write_text(
        "ImageId_ClassId,EncodedPixels\na.png_1,1 3\na.png_2,6 2\nb.png_1,\nb.png_2,17 4\n")
    cfg = DataConfig(root=str(tmp_path), format="csv_combined", classes=["1", "2"], test_labels=None)
    with pytest.warns(DataWarning, match=r"1 image\(s\) .* no row in train.csv .*: c.png"):
        ann = formats.read_train(cfg)
    assert ann.image_ids == ["a.png", "b.png"]
    np.testing.assert_array_equal(ann.mask("a.png"), np.stack([A1, A2]))
    np.testing.assert_array_equal(ann.areas, [[3, 2], [0, 4]])


def test_csv_combined_clouds_labels_and_sample_submission_order(tmp_path):
    write_images(tmp_path / "train_images", ["0011165.jpg"])
    write_images(tmp_path / "test_images", ["b.jpg", "a.jpg"])
    (tmp_path / "train.csv").write_text("Image_Label,EncodedPixels\n0011165.jpg_Fish,17 4\n0011165.jpg_Sugar,\n")
    (tmp_path / "sample_submission.csv").write_text(
        "Image_Label,EncodedPixels\nb.jpg_Fish,1 1\nb.jpg_Sugar,1 1\na.jpg_Fish,1 1\na.jpg_Sugar,1 1\n")
    cfg = DataConfig(root=str(tmp_path), format="csv_combined", combined_column="Image_Label",
                     classes=["Fish", "Sugar"], test_labels=None)
    ann = formats.read_train(cfg)
    np.testing.assert_array_equal(ann.mask("0011165.jpg")[0], B2)
    assert formats.read_test_ids(cfg) == ["b.jpg", "a.jpg"]
    (tmp_path / "train.csv").write_text("Image_Label,EncodedPixels\n0011165.jpgFish,17 4\n")
    with pytest.raises(DataError, match=r"line 2: Image_Label '0011165.jpgFish' has no '_<class>' suffix"):
        formats.read_train(cfg)


def test_csv_instances_merge_relative_rle(tmp_path):
    # relative: "0 3" covers 0-indexed pixels 0..2 (A1); "5 2" covers 5..6 (A2), each string counted from 0
    write_images(tmp_path / "train_images", ["a.png", "b.png"])
    (tmp_path / "train.csv").write_text("ImageId,EncodedPixels\na,0 3\na,5 2\nb,-1\n")
    cfg = DataConfig(root=str(tmp_path), format="csv_instances", relative_rle=True, mode="binary",
                     classes=["pneumothorax"], image_suffix=".png", test_labels=None)
    ann = formats.read_train(cfg)
    np.testing.assert_array_equal(ann.mask("a")[0], A1 | A2)
    np.testing.assert_array_equal(ann.areas, [[5], [0]])
    (tmp_path / "train.csv").write_text("ImageId,EncodedPixels\na,0 3\nb,-4 2\n")
    with pytest.raises(DataError, match=r"line 3 \(ImageId b, class pneumothorax\): relative RLE has a negative"):
        formats.read_train(cfg)


def test_png_binary_per_image_and_per_class(tmp_path):
    write_images(tmp_path / "train_images", ["a.jpg", "b.jpg"])
    masks = tmp_path / "train_masks"
    (masks / "x").mkdir(parents=True)
    (masks / "y").mkdir()
    for name, first, second in [("a", A1, A2), ("b", B2, np.zeros_like(B2))]:
        cv2.imwrite(str(masks / f"{name}.png"), first * 255)
        cv2.imwrite(str(masks / "x" / f"{name}.png"), first * 255)
        cv2.imwrite(str(masks / "y" / f"{name}.png"), second * 255)
    single = DataConfig(root=str(tmp_path), format="png_binary", mode="binary", classes=["x"], train_csv=None,
                        test_labels=None)
    ann = formats.read_train(single)
    np.testing.assert_array_equal(ann.mask("a.jpg"), A1[None])
    np.testing.assert_array_equal(ann.areas, [[3], [4]])
    per_class = DataConfig(root=str(tmp_path), format="png_binary", classes=["x", "y"], train_csv=None,
                           mask_pattern="{class}/{stem}.png", test_labels=None)
    ann = formats.read_train(per_class)
    np.testing.assert_array_equal(ann.mask("a.jpg"), np.stack([A1, A2]))
    np.testing.assert_array_equal(ann.presence, [[True, True], [True, False]])
    cv2.imwrite(str(masks / "y" / "b.png"), np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match=r"differ in size from their image: b.jpg \(mask 3x3, image 4x5\)"):
        formats.read_train(per_class)
    (masks / "y" / "b.png").unlink()
    with pytest.raises(DataError, match=r"1 mask file\(s\) are missing: train_masks/y/b.png"):
        formats.read_train(per_class)


def test_png_binary_single_class_with_a_class_folder(tmp_path):
    # one class whose masks live in a per-class folder: train_masks/x/<stem>.png, not train_masks/<stem>.png
    write_images(tmp_path / "train_images", ["a.jpg"])
    (tmp_path / "train_masks" / "x").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train_masks" / "x" / "a.png"), A1 * 255)
    cfg = DataConfig(root=str(tmp_path), format="png_binary", mode="binary", classes=["x"], train_csv=None,
                     mask_pattern="{class}/{stem}.png", test_labels=None)
    ann = formats.read_train(cfg)
    np.testing.assert_array_equal(ann.mask("a.jpg"), A1[None])
    np.testing.assert_array_equal(ann.areas, [[3]])  # A1: column 0, rows 0..2
    (tmp_path / "train_masks" / "x" / "a.png").unlink()
    with pytest.raises(DataError, match=r"1 mask file\(s\) are missing: train_masks/x/a.png"):
        formats.read_train(cfg)


def test_multiclass_background_area_ignores_rows_of_the_background_class(tmp_path):
    # a CSV that also lists the background class: "1 20" covers all 20 pixels; class "1" is A1 (3 pixels)
    write_images(tmp_path / "train_images", ["a.png"])
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.png,bg,1 20\na.png,1,1 3\n")
    cfg = DataConfig(root=str(tmp_path), classes=["bg", "1"], mode="multiclass", background="bg", test_labels=None)
    ann = formats.read_train(cfg)
    np.testing.assert_array_equal(ann.mask("a.png"), A1)  # class "1" -> index 1, the rest background 0
    np.testing.assert_array_equal(ann.areas, [[20 - 3, 3]])  # as many background pixels as the mask has


def test_png_index_multiclass_with_ignore_and_multilabel(tmp_path):
    write_images(tmp_path / "train_images", ["a.png"], shape=(2, 3))
    (tmp_path / "train_masks").mkdir()
    cv2.imwrite(str(tmp_path / "train_masks" / "a.png"), np.array([[0, 1, 2], [3, 9, 0]], np.uint8))
    # class values: bg <- 0, road <- 1 or 2, car <- 3; 9 is the ignore label -> 255
    cfg = DataConfig(root=str(tmp_path), format="png_index", mode="multiclass", classes=["bg", "road", "car"],
                     class_values=[0, [1, 2], 3], ignore_label=9, train_csv=None, test_labels=None)
    ann = formats.read_train(cfg)
    np.testing.assert_array_equal(ann.mask("a.png"), [[0, 1, 1], [2, 255, 0]])
    np.testing.assert_array_equal(ann.areas, [[2, 2, 1]])
    multilabel = cfg.model_copy(update={"mode": "multilabel", "classes": ["road", "car"], "class_values": [[1, 2], 3]})
    np.testing.assert_array_equal(formats.read_train(multilabel).mask("a.png"),
                                  [[[0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 0, 0]]])
    with pytest.raises(DataError, match=r"label\(s\) \[9\] that are neither in data.class_values"):
        formats.read_train(cfg.model_copy(update={"ignore_label": None}))


def test_read_test_ids_reports_missing_test_images(tmp_path):
    cfg = long_set(tmp_path, GOOD_ROWS)
    write_images(tmp_path / "test_images", ["t1.png"])
    (tmp_path / "sample_submission.csv").write_text(
        "ImageId,ClassId,EncodedPixels\nt2.png,1,\nt1.png,1,\nt2.png,2,\n")
    with pytest.raises(DataError, match=r"1 test image\(s\) .* missing .*: t2.png"):
        formats.read_test_ids(cfg)
    write_images(tmp_path / "test_images", ["t2.png"])
    assert formats.read_test_ids(cfg) == ["t2.png", "t1.png"]


CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid4"


@pytest.mark.skipif(not (CAMVID / "train.csv").is_file(), reason="needs ../shared/data/camvid4")
def test_camvid4_rle_matches_index_maps():
    # two routes to the same labels: the RLE CSV, and the index-map PNGs (Car 8, Pedestrian 9, Bicyclist 10, Fence 7)
    from_csv = formats.read_train(DataConfig(root=str(CAMVID), test_labels=None))
    from_png = formats.read_train(DataConfig(root=str(CAMVID), format="png_index", train_csv=None, test_labels=None,
                                             class_values=[8, 9, 10, 7]))
    assert len(from_csv) == 468 and sorted(from_csv.image_ids) == sorted(from_png.image_ids)
    rows = [from_csv.index(i) for i in from_png.image_ids]
    np.testing.assert_array_equal(from_csv.areas[rows], from_png.areas)
    for image_id in from_png.image_ids[::50]:
        np.testing.assert_array_equal(from_csv.mask(image_id), from_png.mask(image_id))


# ---------------------------------------------------------------- dataset


def test_normalise_by_hand():
    image = np.full((2, 2, 3), 51, np.uint8)  # 51 / 255 = 0.2
    out = normalise(image, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    # (0.2 - 0.1) / 0.5 = 0.2; (0.2 - 0.2) / 0.5 = 0; (0.2 - 0.3) / 0.5 = -0.2
    np.testing.assert_allclose(out[:, 0, 0].numpy(), [0.2, 0.0, -0.2], atol=1e-6)
    gray = normalise(image[:, :, :1], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])  # mean 0.2, std 0.5 averaged
    assert gray.shape == (1, 2, 2)
    np.testing.assert_allclose(gray.numpy(), 0.0, atol=1e-6)


def test_dataset_items_and_resize(tmp_path):
    cfg = long_set(tmp_path, GOOD_ROWS)
    cv2.imwrite(str(tmp_path / "train_images" / "a.png"), np.full((H, W), 51, np.uint8))  # a gray file
    ann = formats.read_train(cfg)
    ds = SegmentationDataset(cfg, ann.image_ids, annotations=ann, mean=[0.0] * 3, std=[1.0] * 3)
    item = ds[0]
    assert item["image"].shape == (3, H, W) and item["image_id"] == "a.png"
    np.testing.assert_allclose(item["image"].numpy(), 0.2, atol=1e-6)  # gray read as 3 channels of 51/255
    np.testing.assert_array_equal(item["mask"].numpy(), np.stack([A1, A2]))
    np.testing.assert_array_equal(item["presence"].numpy(), [1.0, 1.0])
    assert item["orig_size"].tolist() == [H, W]
    one = SegmentationDataset(cfg, ann.image_ids, annotations=ann, mean=[0.0] * 3, std=[1.0] * 3, in_channels=1)
    assert one[0]["image"].shape == (1, H, W)
    big = SegmentationDataset(cfg.model_copy(update={"image_size": (8, 10)}), ann.image_ids, annotations=ann,
                              mean=[0.0] * 3, std=[1.0] * 3)
    item = big[1]
    assert item["image"].shape == (3, 8, 10) and item["orig_size"].tolist() == [H, W]
    # nearest-neighbour doubling repeats every pixel twice along each axis
    np.testing.assert_array_equal(item["mask"][1].numpy(), np.repeat(np.repeat(B2, 2, 0), 2, 1))
    np.testing.assert_array_equal(item["presence"].numpy(), [0.0, 1.0])
    test_ds = SegmentationDataset(cfg, ["c.png"], folder="train", mean=[0.0] * 3, std=[1.0] * 3)
    assert "mask" not in test_ds[0] and test_ds[0]["image"].shape == (3, H, W)


def test_dataset_multiclass_mask_is_long(tmp_path):
    cfg = long_set(tmp_path, GOOD_ROWS).model_copy(update={"mode": "multiclass", "classes": ["bg", "1", "2"],
                                                           "background": "bg"})
    ann = formats.read_train(cfg)
    item = SegmentationDataset(cfg, ["a.png"], annotations=ann, mean=[0.0] * 3, std=[1.0] * 3)[0]
    assert item["mask"].dtype.is_floating_point is False
    np.testing.assert_array_equal(item["mask"].numpy(), A1 * 1 + A2 * 2)  # bg 0, class "1" -> 1, "2" -> 2
    np.testing.assert_array_equal(item["presence"].numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(ann.areas[0], [20 - 5, 3, 2])


def test_augmentations_keep_image_and_mask_aligned(tmp_path):
    # marker pixels: red 255 exactly where class "2" is; everything else has red <= 100
    rng = np.random.default_rng(0)
    image = rng.integers(0, 101, (32, 48, 3)).astype(np.uint8)
    marker = np.zeros((32, 48), np.uint8)
    marker[5:9, 10] = marker[8, 10:16] = marker[20, 30] = 1  # an L and a dot: flips and turns show
    image[marker > 0, 0] = 255
    (tmp_path / "train_images").mkdir()
    cv2.imwrite(str(tmp_path / "train_images" / "m.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (tmp_path / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\nm.png,2,{_encode(marker)}\n")
    augment = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomRotate90", "p": 0.5},
        # NOTE: whole-pixel shifts only: under a free rotation or scale, nearest-neighbour sampling of the
        # image and of the mask may round a pixel centre that lands exactly between two pixels differently
        {"name": "Affine", "translate_px": [-5, 5], "interpolation": 0, "mask_interpolation": 0, "p": 1.0},
        {"name": "CropNonEmptyMaskIfExists", "height": 24, "width": 24},
    ]
    cfg = DataConfig(root=str(tmp_path), classes=["1", "2"], test_labels=None, augment={"train": augment})
    ann = formats.read_train(cfg)
    ds = SegmentationDataset(cfg, ["m.png"], annotations=ann, mean=[0.0] * 3, std=[1.0] * 3,
                             transforms=build_transforms(cfg, "train"))
    for _ in range(20):
        item = ds[0]
        red = np.rint(item["image"][0].numpy() * 255)
        mask = item["mask"].numpy()
        assert item["image"].shape == (3, 24, 24) and mask.shape == (2, 24, 24)
        np.testing.assert_array_equal(red == 255, mask[1] > 0)
        assert mask[0].sum() == 0 and item["presence"].tolist() == [0.0, float(mask[1].any())]


def _encode(mask: np.ndarray) -> str:
    from segfold.data import rle

    return rle.encode(mask)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "HorizontalFlp", "p": 0.5}, r"data.augment.train\[0\]: unknown transform 'HorizontalFlp'; "
                                             r"did you mean 'HorizontalFlip'"),
        ({"name": "Affine", "rotat": 10}, r"train\[0\] \(Affine\): unknown argument 'rotat'; did you mean 'rotate'"),
        ({"name": "HorizontalFlip", "p": 3}, r"train\[0\] \(HorizontalFlip\): albumentations rejects"),
        ({"name": "Normalize"}, r"Normalize cannot be used"),
        ({"name": "OneOf", "transforms": [{"name": "VerticalFlip"}, {"name": "Blurr"}]},
         r"train\[0\].transforms\[1\]: unknown transform 'Blurr'; did you mean 'Blur'"),
        ({"name": "os.system"}, r"unknown transform 'os.system'"),
    ],
)
def test_bad_augmentations_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_transforms(DataConfig(augment={"train": [spec]}), "train")


def test_default_pipelines_build():
    cfg = DataConfig()
    assert len(build_transforms(cfg, "train").transforms) == 4
    assert len(build_transforms(cfg, "valid").transforms) == 0
    nested = build_pipeline([{"name": "OneOf", "p": 1.0, "transforms": [{"name": "HorizontalFlip"}]}], "x")
    assert type(nested.transforms[0]).__name__ == "OneOf"


# ---------------------------------------------------------------- sampler


def test_sampler_holds_the_share_in_every_batch():
    presence = np.zeros((100, 2), bool)
    presence[:20, 0] = True  # 20 positives, 80 empty
    sampler = PositiveShareSampler(presence, 0.5, 64, seed=3, batch_size=8)
    order = np.array(list(sampler)).reshape(-1, 8)
    assert order.shape == (8, 8)
    assert ((order < 20).sum(axis=1) == 4).all()  # 0.5 * 8 = 4 positives per batch
    # 0.3 * 8 = 2.4: the carried rounding gives 2 or 3 per batch and 0.3 * 80 = 24 over ten batches
    counts = (np.array(list(PositiveShareSampler(presence, 0.3, 80, seed=3, batch_size=8))).reshape(-1, 8) < 20).sum(1)
    assert set(counts.tolist()) <= {2, 3} and counts.sum() == 24


def test_sampler_is_deterministic_and_resumable():
    presence = np.arange(50) % 3 == 0
    a = PositiveShareSampler(presence, 0.6, None, seed=1, batch_size=5)
    b = PositiveShareSampler(presence, 0.6, None, seed=1, batch_size=5)
    assert list(a) == list(b) and len(a) == 50
    a.set_epoch(1)
    assert list(a) != list(b)
    c = PositiveShareSampler(presence, 0.6, None, seed=99, batch_size=5)
    c.load_state_dict(a.state_dict())
    assert list(c) == list(a)
    # each pass over the 17 positives uses every one before repeating: 3 per batch (0.6 * 5), so the
    # first 6 batches hold the first 18 draws, i.e. all 17 positives and one of the next pass
    positives = [i for i in list(b) if presence[i]]
    assert set(positives[:18]) == set(np.flatnonzero(presence).tolist())


def test_sampler_ddp_replicas_split_one_sequence():
    presence = np.arange(40) < 10
    replicas = [PositiveShareSampler(presence, 0.25, 40, seed=0, batch_size=4, num_replicas=2, rank=r)
                for r in range(2)]
    orders = [np.array(list(s)).reshape(-1, 4) for s in replicas]
    assert all(len(s) == 20 for s in replicas)
    for order in orders:
        assert ((order < 10).sum(axis=1) == 1).all()  # 0.25 * 4 = 1 positive per batch on every rank
    together = np.concatenate([o.ravel() for o in orders])
    assert len(set(together[together >= 10].tolist())) == 30  # 30 negatives drawn once each across ranks


def test_sampler_without_positives_warns():
    with pytest.warns(UserWarning, match="no positive image"):
        sampler = PositiveShareSampler(np.zeros(10, bool), 0.5, None, seed=0, batch_size=2)
    assert sorted(sampler) == list(range(10))


# ---------------------------------------------------------------- demo data


def test_demo_data_is_deterministic_and_shaped(tmp_path):
    first = demo.make_demo_data(tmp_path / "one" / "demo", seed=5, n_train=24, n_test=4)
    second = demo.make_demo_data(tmp_path / "two" / "demo", seed=5, n_train=24, n_test=4)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "train_images"]) == 24
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    cfg = DataConfig(root=str(first))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ann = formats.read_train(cfg)
    assert len(ann) == 24 and (ann.shapes == [demo.HEIGHT, demo.WIDTH]).all()
    assert 0.25 < ann.presence.mean() < 0.75  # about half of the (image, class) pairs hold a defect
    assert formats.read_test_ids(cfg) == [f"test_{i:04d}.jpg" for i in range(4)]
    assert len(formats.read_test_labels(cfg)) == 4
    # each class has its colour: inside class c's mask the image's mean colour is nearest to COLOURS[c]
    for c in range(4):
        rows = np.flatnonzero(ann.presence[:, c])
        pixels = np.concatenate([_pixels(cfg, ann, ann.image_ids[r], c) for r in rows])
        distance = np.linalg.norm(demo.COLOURS - pixels.mean(axis=0), axis=1)
        assert distance.argmin() == c


def _pixels(cfg, ann, image_id, c):
    from segfold.data.images import read_image

    image = read_image(formats.image_path(cfg, image_id))
    return image[ann.mask(image_id)[c] > 0].astype(float)


def test_demo_prefix_and_ensure(tmp_path):
    small = demo.make_demo_data(tmp_path / "small", seed=5, n_train=3, n_test=1)
    image, masks = demo.make_image(5, "train", 2)
    on_disk = cv2.imread(str(small / "train_images" / "train_0002.jpg"))[:, :, ::-1]
    assert np.abs(on_disk.astype(int) - image).mean() < 3  # the same picture, JPEG-compressed
    assert masks.shape == (4, demo.HEIGHT, demo.WIDTH)
    other = DataConfig(root=str(tmp_path / "elsewhere"))
    assert demo.ensure_demo_data(other) is False and not (tmp_path / "elsewhere").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="refusing"):
        demo.make_demo_data(tmp_path / "taken")


def test_ensure_demo_data_writes_a_demo_root_once(tmp_path, monkeypatch):
    import functools

    monkeypatch.setattr(demo, "make_demo_data", functools.partial(demo.make_demo_data, n_train=3, n_test=1))
    cfg = DataConfig(root=str(tmp_path / "demo"))
    assert demo.ensure_demo_data(cfg) is True
    assert len(formats.read_train(cfg)) == 3
    assert demo.ensure_demo_data(cfg) is False


@pytest.mark.parametrize("metric", ["dice_image", "tgs_iou"])
def test_per_image_metrics_refuse_several_scored_classes(metric):
    from segfold.config import validate_config
    from segfold.errors import ConfigError

    with pytest.raises(ConfigError, match=f"metric '{metric}' scores one mask per image.*use metric 'dice_pairs'"):
        validate_config({"data": {"classes": ["a", "b"], "metric": metric}})
    assert validate_config({"data": {"classes": ["a"], "mode": "binary", "metric": metric}}).data.metric == metric
