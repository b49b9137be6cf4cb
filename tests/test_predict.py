"""Test inference: TTA merged as probabilities, tiles vs the full image, resizing, the pad-to-stride model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segfold.infer.tiles import ramp_weights, sliding_window, tile_starts
from segfold.infer.tta import build_tta, make_predictor, tta_predict


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
