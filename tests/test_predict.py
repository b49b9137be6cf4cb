"""Test inference: TTA merged as probabilities, tiles vs the full image, resizing, the pad-to-stride model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segfold.predict.tiles import ramp_weights, sliding_window, tile_starts
from segfold.predict.tta import build_tta, make_predictor, tta_predict
from segfold.probs import resize_probs


class WidthBias(nn.Module):
    """logits = 3 * image + b(x), b rising from -4 to 4 along the width: not flip-equivariant.

    The aux label is the mean of the left half of the image: a horizontal flip changes it.
    """

    def __init__(self, width: int, aux: bool = False) -> None:
        super().__init__()
        self.register_buffer("bias", torch.linspace(-4.0, 4.0, width))
        self.aux = aux
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor):
        self.calls.append(len(x))
        masks = 3 * x[:, :1] + self.bias
        if not self.aux:
            return masks
        return masks, 5 * x[:, :1, :, : x.shape[-1] // 2].mean(dim=(2, 3)) - 1


class Pointwise(nn.Module):
    """A 1x1 convolution: every flip, rotation or scale of a constant image gives the same output."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.conv(x)


def test_flip_tta_averages_probabilities_not_logits():
    image = torch.ones(1, 3, 4, 6)
    model = WidthBias(6)
    probs, cls_probs = tta_predict(model, image, build_tta("hflip"), mode="binary")
    bias = torch.linspace(-4.0, 4.0, 6)
    # identity copy: 3 + b; flipped copy, flipped back: 3 + b reversed = 3 - b (b is antisymmetric)
    expected = (torch.sigmoid(3 + bias) + torch.sigmoid(3 - bias)) / 2
    torch.testing.assert_close(probs[0, 0], expected.expand(4, 6))
    assert not torch.allclose(probs[0, 0], torch.sigmoid(torch.full((4, 6), 3.0)), atol=1e-3)  # sigmoid of mean
    assert cls_probs is None
    assert model.calls == [2]  # both copies in one forward pass


def test_flips_tta_shares_forward_passes_and_merges_aux_labels():
    image = torch.zeros(2, 3, 4, 6)
    image[1, :, :, :3] = 1.0  # second image: left half bright
    model = WidthBias(6, aux=True)
    probs, cls_probs = tta_predict(model, image, build_tta("flips"), mode="multilabel", forward_batch=4)
    assert model.calls == [4, 4]  # 4 copies x 2 images = 8, at most 4 per pass
    # image 1, label: the left half is bright in 2 copies (no h-flip) and dark in 2 (h-flip): 5*1-1 = 4 and -1
    expected_cls = (torch.sigmoid(torch.tensor(4.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    assert cls_probs[1, 0].item() == pytest.approx(expected_cls.item(), abs=1e-6)
    assert cls_probs[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item(), abs=1e-6)
    bias = torch.linspace(-4.0, 4.0, 6)
    expected = (torch.sigmoid(bias) + torch.sigmoid(-bias)) / 2  # image 0 is dark: logits +-b
    torch.testing.assert_close(probs[0, 0], expected.expand(4, 6))


def test_d4_on_non_square_images_and_multiscale():
    model = Pointwise().eval()
    image = torch.full((1, 3, 8, 12), 0.3)
    direct = torch.sigmoid(model(image))
    model.calls.clear()
    probs, _ = tta_predict(model, image, build_tta("d4", scales=[0.5]), mode="multilabel")
    assert len(build_tta("d4", scales=[0.5])) == 16  # 8 dihedral copies x 2 scales
    # copies of one shape share a pass: 8x12 and 12x8 at scale 1, 4x6 and 6x4 at scale 0.5
    assert sorted(model.calls) == sorted([(4, 3, 8, 12), (4, 3, 12, 8), (4, 3, 4, 6), (4, 3, 6, 4)])
    torch.testing.assert_close(probs, direct)


def test_multiclass_uses_softmax_per_copy():
    image = torch.ones(1, 3, 2, 4)
    model = WidthBias(4)

    class TwoClass(nn.Module):  # logits [f, 0]: softmax gives sigmoid(f) for class 0
        def forward(self, x):
            logits = model(x)
            return torch.cat([logits, torch.zeros_like(logits)], dim=1)

    probs, _ = tta_predict(TwoClass(), image, build_tta("hflip"), mode="multiclass")
    bias = torch.linspace(-4.0, 4.0, 4)
    expected = (torch.sigmoid(3 + bias) + torch.sigmoid(3 - bias)) / 2
    torch.testing.assert_close(probs[0, 0, 0], expected)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 2, 4))


def test_folds_are_averaged_as_probabilities():
    first, second = Pointwise(1).eval(), Pointwise(1).eval()
    with torch.no_grad():
        for model, value in ((first, 2.0), (second, -1.0)):
            model.conv.weight.zero_()
            model.conv.bias.fill_(value)
    probs, _ = make_predictor([first, second], build_tta("none"), "binary")(torch.zeros(1, 3, 2, 2))
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(probs, expected.expand(1, 1, 2, 2))


def test_tile_layout_and_weights():
    # 100 px, tiles of 40 sharing >= 10: stride <= 30 -> ceil(60 / 30) + 1 = 3 tiles at 0, 30, 60
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    # 101 px: ceil(61 / 30) + 1 = 4 tiles spread over 0..61: 0, 20.33, 40.67, 61 -> 0, 20, 41, 61
    assert tile_starts(101, 40, 10) == [0, 20, 41, 61]
    assert tile_starts(30, 40, 10) == [0]
    weights = ramp_weights(8, 2, rise_start=True, fall_end=False)
    # sin^2(pi/2 * 0.25) = 0.1464..., sin^2(pi/2 * 0.75) = 0.8535...
    np.testing.assert_allclose(weights, [0.14644661, 0.85355339, 1, 1, 1, 1, 1, 1], rtol=1e-6)
    assert ramp_weights(8, 2, rise_start=False, fall_end=False).tolist() == [1.0] * 8


def test_constant_model_gives_constant_map_through_tiles():
    model = Pointwise(3).eval()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.copy_(torch.tensor([0.7, -2.0, 0.0]))
    predict = make_predictor([model], build_tta("flips"), "multilabel")
    probs, _ = sliding_window(predict, torch.rand(2, 3, 50, 70), [32, 32], overlap=8, tiles_per_pass=5)
    expected = torch.sigmoid(torch.tensor([0.7, -2.0, 0.0]))[None, :, None, None].expand(2, 3, 50, 70)
    torch.testing.assert_close(probs, expected)


def _naive_tiles(model: nn.Module, image: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Uniform average of overlapping tiles (the seam-prone way), written out by hand."""
    _, _, height, width = image.shape
    total = torch.zeros(1, 1, height, width)
    count = torch.zeros(1, 1, height, width)
    for y in tile_starts(height, tile, overlap):
        for x in tile_starts(width, tile, overlap):
            total[..., y:y + tile, x:x + tile] += torch.sigmoid(model(image[..., y:y + tile, x:x + tile]))
            count[..., y:y + tile, x:x + tile] += 1
    return total / count


def test_tiles_match_full_image_on_translation_equivariant_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1, 3, padding=1).eval()  # zero padding: tile borders see zeros, the full image does not
    image = torch.rand(1, 3, 60, 90) * 4
    with torch.no_grad():
        full = torch.sigmoid(model(image))
        predict = make_predictor([model], build_tta("none"), "binary")
        tiled, _ = sliding_window(predict, image, [32, 32], overlap=12)
        naive = _naive_tiles(model, image, 32, 12)
    naive_error = (naive - full).abs().max().item()
    tiled_error = (tiled - full).abs().max().item()
    assert naive_error > 0.05  # the seams are there without blending weights
    assert tiled_error < 0.01 and tiled_error < naive_error / 10


def test_resize_to_submission_resolution():
    probs = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) / 16
    # 4x4 -> 2x2 by area: the mean of each 2x2 block, e.g. top-left (0 + 1 + 4 + 5) / 4 / 16 = 2.5 / 16
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]]) / 16
    torch.testing.assert_close(resize_probs(probs, (2, 2))[0, 0], expected)
    # a 4x smaller map of a constant stays that constant; enlarging a constant too
    torch.testing.assert_close(resize_probs(torch.full((1, 2, 8, 12), 0.25), (2, 3)), torch.full((1, 2, 2, 3), 0.25))
    torch.testing.assert_close(resize_probs(torch.full((1, 1, 2, 3), 0.5), (5, 7)), torch.full((1, 1, 5, 7), 0.5))
    assert resize_probs(probs, (4, 4)) is probs
    # a slight shrink (4 -> 3) is bilinear: output row 0 samples input row 4/3 * 0.5 - 0.5 = 1/6,
    # i.e. 5/6 of row 0 and 1/6 of row 1 (a vertical ramp 0, 1, 2, 3 gives 1/6)
    ramp = torch.arange(4, dtype=torch.float32).reshape(1, 1, 4, 1).expand(1, 1, 4, 2)
    torch.testing.assert_close(resize_probs(ramp, (3, 2))[0, 0, :, 0], torch.tensor([1 / 6, 1.5, 17 / 6]))


def test_model_pads_to_its_stride_and_crops_back():
    from segfold.models import create_model

    model = create_model("Unet", encoder_name="test_resnet", encoder_weights=None, classes=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 45, 61)).shape == (1, 2, 45, 61)  # 45x61 is no multiple of 32


def _write_experiment(tmp_path, folds=(0, 1), aux=True, preprocessing=None):
    """A 2-image test set (40x56 PNGs) and two trained-looking fold checkpoints of a tiny Unet."""
    import cv2
    import yaml

    from segfold.config import validate_config
    from segfold.models import build_model

    root = tmp_path / "data"
    (root / "test_images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("t1.png", "t2.png"):
        cv2.imwrite(str(root / "test_images" / name), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    (root / "sample_submission.csv").write_text(
        "ImageId,ClassId,EncodedPixels\n" + "".join(f"{i},{c},\n" for i in ("t2.png", "t1.png") for c in "12"))
    raw = {
        "experiment": {"name": "pred", "output_root": str(tmp_path / "out")},
        "data": {"root": str(root), "classes": ["1", "2"]},
        "model": {"arch": "Unet", "encoder_name": "test_resnet", "encoder_weights": None, "aux": aux,
                  "params": {"decoder_channels": [16, 8, 8, 8, 8]}},
        "infer": {"device": "cpu", "batch_size": 2},
    }
    cfg = validate_config(raw)
    for fold in folds:
        torch.manual_seed(fold + 1)
        model = build_model(cfg.model, 2)
        (cfg.experiment.output_dir / f"fold{fold}").mkdir(parents=True)
        state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1, "score": 0.5}
        if preprocessing is not None:
            state["preprocessing"] = preprocessing
        torch.save(state, cfg.experiment.output_dir / f"fold{fold}" / "best.pt")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return cfg, path


def _expected_flips(cfg, image_name):
    """Mean over folds and the 4 flips of the sigmoids, by hand: cv2 read, normalise, torch.flip."""
    import cv2

    from segfold.probs import load_checkpoint_model

    image = cv2.cvtColor(cv2.imread(str(cfg.data.root_path / "test_images" / image_name)), cv2.COLOR_BGR2RGB)
    masks, labels = [], []
    for fold in (0, 1):
        model, _ = load_checkpoint_model(cfg.experiment.output_dir / f"fold{fold}" / "best.pt", "cpu")
        mean = torch.tensor(model.pretrained_cfg["mean"])[:, None, None]
        std = torch.tensor(model.pretrained_cfg["std"])[:, None, None]
        x = ((torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std)[None]
        for dims in ([], [3], [2], [2, 3]):
            with torch.no_grad():
                m, l = model(torch.flip(x, dims) if dims else x)
            masks.append(torch.sigmoid(torch.flip(m, dims) if dims else m))
            labels.append(torch.sigmoid(l))
    return torch.stack(masks).mean(0)[0], torch.stack(labels).mean(0)[0]


@pytest.mark.slow
def test_predict_script_averages_folds_and_flips(tmp_path, repo_root, capsys):
    from segfold.probs.store import ProbStore
    from test_submission import _load_script

    cfg, path = _write_experiment(tmp_path)
    script = _load_script(repo_root, "predict")
    script.main(["--config", str(path), "--folds", "0,1", "--tta", "flips"])
    store = ProbStore.open(cfg.experiment.output_dir / "test", "test")
    assert store.image_ids == ["t2.png", "t1.png"]  # the sample submission's order
    assert store.shape == (2, 2, 40, 56) and store.cls.shape == (2, 2)
    expected, expected_cls = _expected_flips(cfg, "t1.png")
    assert np.abs(store.read(1) - expected.numpy()).max() <= 0.5 / 255 + 1e-5
    np.testing.assert_allclose(store.cls[1], expected_cls.numpy(), atol=1e-5)
    assert "test store" in capsys.readouterr().out

    # at a submission resolution of half the size, the map is the 2x2 block mean
    script.main(["--config", str(path), "--tta", "flips", "--set", "data.metric_size=[20,28]"])
    small = ProbStore.open(cfg.experiment.output_dir / "test", "test")
    assert small.shape == (2, 2, 20, 28)
    pooled = torch.nn.functional.avg_pool2d(expected[None], 2)[0].numpy()
    assert np.abs(small.read(1) - pooled).max() <= 0.5 / 255 + 1e-5


def test_predict_reports_missing_folds(tmp_path, repo_root, capsys):
    from test_submission import _load_script

    _, path = _write_experiment(tmp_path, folds=(0,), aux=False)
    with pytest.raises(SystemExit):
        _load_script(repo_root, "predict").main(["--config", str(path), "--folds", "0,3"])
    assert "fold(s) [3] have no best.pt" in capsys.readouterr().err


def test_infer_config_checks_tiles_and_scales():
    from segfold.config import ConfigError, validate_config

    assert validate_config({"infer": {"tile_size": 256, "tile_overlap": 32}}).infer.tile_size == [256, 256]
    with pytest.raises(ConfigError, match=r"tile_overlap \(64\) must be below half the smallest tile side \(96\)"):
        validate_config({"infer": {"tile_size": [96, 512]}})
    with pytest.raises(ConfigError, match="scales must be positive"):
        validate_config({"infer": {"scales": [0.0, 1.0]}})
    with pytest.raises(ConfigError, match="infer.tta"):
        validate_config({"infer": {"tta": "d8"}})


def test_predict_normalises_as_the_checkpoint_records(tmp_path):
    """The mean/std a checkpoint was trained with (not the encoder name's defaults) normalise the test images."""
    import cv2

    from segfold.predict import predict_test

    record = {"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.25, 0.125], "input_range": [0, 1]}
    cfg, _ = _write_experiment(tmp_path, folds=(0,), aux=False, preprocessing=record)
    store = predict_test(cfg, tta="none")
    image = cv2.cvtColor(cv2.imread(str(cfg.data.root_path / "test_images" / "t1.png")), cv2.COLOR_BGR2RGB)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    model = build_fold0_model(cfg)

    def probs(mean, std):
        x = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            return torch.sigmoid(model(x[None]))[0].numpy()

    assert np.abs(store.read(1) - probs(record["mean"], record["std"])).max() <= 0.5 / 255 + 1e-5
    default = model.pretrained_cfg  # the encoder's own defaults give other probabilities: the test can fail
    assert np.abs(probs(default["mean"], default["std"]) - probs(record["mean"], record["std"])).max() > 0.01


def build_fold0_model(cfg):
    """Fold 0's network with its checkpoint's weights, rebuilt by hand (not through load_checkpoint_model)."""
    from segfold.models import build_model

    model = build_model(cfg.model, 2).eval()
    model.load_state_dict(torch.load(cfg.experiment.output_dir / "fold0" / "best.pt", weights_only=True)["model"])
    return model


def test_predict_logs_the_checkpoint_file_of_every_model(tmp_path, caplog):
    """One line per fold naming the file it predicts with ('auto': the one the fold chose), and the full-data fit's."""
    import json
    import logging
    import shutil

    from segfold.data.demo import make_demo_data
    from segfold.predict import predict_test
    from test_provenance import make_cfg, save_best

    demo = make_demo_data(tmp_path / "demo", seed=2, n_train=6, n_test=2)
    cfg = make_cfg(demo, tmp_path / "out")
    out = cfg.experiment.output_dir
    save_best(cfg, 0, epoch=3)
    (out / "fold0" / "result.json").write_text(json.dumps({"checkpoint": "best.pt"}))
    save_best(cfg, 1, epoch=4)
    shutil.copy(save_best(cfg, 1, seed=1, epoch=6), out / "fold1" / "averaged.pt")  # fold 1's average won
    save_best(cfg, 1, epoch=4)
    (out / "fold1" / "result.json").write_text(json.dumps({"checkpoint": "averaged.pt"}))
    (out / "full").mkdir()
    shutil.copy(save_best(cfg, 0, seed=2, epoch=9), out / "full" / "best.pt")  # the full-data fit (epoch 9)
    save_best(cfg, 0, epoch=3)

    both = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"checkpoint": "auto", "models": "both"})})
    with caplog.at_level(logging.INFO, logger="segfold.predict"):
        predict_test(both)
    chose = "infer.checkpoint 'auto': the file it chose"
    assert f"fold 0: best.pt (epoch 3; {chose}) {(out / 'fold0' / 'best.pt').resolve()}" in caplog.text
    assert f"fold 1: averaged.pt (epoch 6; {chose}) {(out / 'fold1' / 'averaged.pt').resolve()}" in caplog.text
    assert f"full-data fit: best.pt (epoch 9; {chose}) {(out / 'full' / 'best.pt').resolve()}" in caplog.text

    caplog.clear()
    plain = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"checkpoint": "best.pt", "folds": [1]})})
    with caplog.at_level(logging.INFO, logger="segfold.predict"):
        predict_test(plain)
    assert f"fold 1: best.pt (epoch 4) {(out / 'fold1' / 'best.pt').resolve()}" in caplog.text
    assert "fold 0:" not in caplog.text and "full-data fit" not in caplog.text
