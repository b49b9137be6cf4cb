"""PAN, DeepLabV3, DeepLabV3Plus, UPerNet, Segformer and DPT: sizes, parameter parity, heads, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segfold.models import create_model
from segfold.models.decoders.deeplab import DeepLabV3Decoder, DeepLabV3PlusDecoder
from segfold.models.decoders.dpt import DPTDecoder, DPTSegmentationHead
from segfold.models.decoders.pan import PANDecoder
from segfold.models.decoders.segformer import SegformerDecoder
from segfold.models.decoders.upernet import UPerNetDecoder

RESNET_CHANNELS = [3, 32, 32, 48, 192, 96]  # test_resnet, strides 1, 2, 4, 8, 16, 32


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fake_features(channels: list[int], size: int = 64, strides: list[int] | None = None) -> list[torch.Tensor]:
    strides = strides or [2**i for i in range(len(channels))]
    return [torch.randn(2, c, size // s, size // s) for c, s in zip(channels, strides, strict=True)]


# ----------------------------------------------------------------------------- decoders on fake features

# measured with segmentation_models_pytorch 0.5.0 (decoder only, encoder tu-test_resnet at depth 5 / 4 / 3)
DECODER_PARAMS = {
    PANDecoder: (93159, 47495, 16183),
    DeepLabV3Decoder: (1633792, 2346496, 1277440),
    DeepLabV3PlusDecoder: (607280, 732752, 544544),
    UPerNetDecoder: (6884064, 5973536, 4300960),
    SegformerDecoder: (431872, 341504, 226560),
}


@pytest.mark.parametrize("decoder_class", list(DECODER_PARAMS), ids=lambda c: c.__name__)
def test_decoder_parameter_parity_by_depth(decoder_class):
    for depth, expected in zip((5, 4, 3), DECODER_PARAMS[decoder_class], strict=True):
        assert count(decoder_class(RESNET_CHANNELS[: depth + 1])) == expected, depth


def test_pan_decoder_parameters_by_hand():
    # conv-BN-ReLU with bias: in*out*k*k + out + 2*out.
    # FPA(96 -> 32): global 96*32+96 = 3168, mid 3168, 7x7 96->1: 4704+3, 5x5 1->1: 28, two 3x3: 24,
    #   5x5: 28, 7x7: 52 -> 11175.
    # GAU(skip c): attention 32*32+96 = 1120, skip 3x3 c*32*9+96; c = 192, 48, 32 -> 56512 + 15040 + 10432.
    assert count(PANDecoder(RESNET_CHANNELS)) == 11175 + 56512 + 15040 + 10432


def test_decoder_output_sizes_and_strides():
    # resnet-like pyramid at 64 px, dilated to output stride 16 for PAN / DeepLabV3+ and 8 for DeepLabV3
    os16 = fake_features(RESNET_CHANNELS, strides=[1, 2, 4, 8, 16, 16])
    os8 = fake_features(RESNET_CHANNELS, strides=[1, 2, 4, 8, 8, 8])
    plain = fake_features(RESNET_CHANNELS)
    assert PANDecoder(RESNET_CHANNELS).eval()(os16).shape == (2, 32, 16, 16)
    assert DeepLabV3Decoder(RESNET_CHANNELS).eval()(os8).shape == (2, 256, 8, 8)
    assert DeepLabV3PlusDecoder(RESNET_CHANNELS).eval()(os16).shape == (2, 256, 16, 16)
    assert UPerNetDecoder(RESNET_CHANNELS).eval()(plain).shape == (2, 256, 16, 16)
    assert SegformerDecoder(RESNET_CHANNELS).eval()(plain).shape == (2, 256, 16, 16)


def test_segformer_skips_empty_stages():
    # mit_b0 widths; index 1 is the empty stride-2 map. Linear c->256 per stage + 1x1 fuse (4*256 -> 256) + BN:
    # (32+64+160+256)*256 + 4*256 + 1024*256 + 2*256 = 394752 (segmentation_models_pytorch 0.5.0 agrees).
    channels = [3, 0, 32, 64, 160, 256]
    decoder = SegformerDecoder(channels)
    assert count(decoder) == 512 * 256 + 4 * 256 + 1024 * 256 + 2 * 256 == 394752
    features = fake_features(channels)
    assert decoder.eval()(features).shape == (2, 256, 16, 16)


def test_pan_small_maps_survive_three_poolings():
    # 1 x 1 at the deepest level: the pyramid's max-poolings keep one pixel instead of failing
    decoder = PANDecoder(RESNET_CHANNELS).eval()
    features = fake_features(RESNET_CHANNELS, size=16, strides=[1, 2, 4, 8, 16, 16])
    assert decoder(features).shape == (2, 32, 4, 4)


def test_dpt_decoder_parity_and_sizes():
    # measured with segmentation_models_pytorch 0.5.0: DPT(tu-test_vit) minus its encoder (371240, timm head
    # included) = decoder + head; "add" and "ignore" have no readout projection (4 * (128*64 + 64) fewer).
    for readout, expected in (("cat", 28910633 - 371240), ("add", 28877609 - 371240), ("ignore", 28877609 - 371240)):
        decoder, head = DPTDecoder(64, 16, readout), DPTSegmentationHead(256, 1)
        assert count(decoder) + count(head) == expected, readout
    assert 28910633 - 28877609 == 4 * (128 * 64 + 64)
    decoder = DPTDecoder(64, 16, "cat", (16, 32, 64, 64), 32).eval()
    tokens = [torch.randn(2, 64, 5, 3) for _ in range(4)]  # an 80 x 48 input at patch 16
    prefix = [torch.randn(2, 1, 64) for _ in range(4)]
    assert decoder(tokens, prefix).shape == (2, 32, 40, 24)  # stride 2
    with pytest.raises(ValueError, match="class token"):
        decoder(tokens, None)
    assert DPTDecoder(64, 16, "ignore", (16, 32, 64, 64), 32).eval()(tokens, None).shape == (2, 32, 40, 24)


def test_dpt_decoder_rejects_bad_settings():
    with pytest.raises(ValueError, match="decoder_readout"):
        DPTDecoder(64, 16, "mean")
    with pytest.raises(ValueError, match="one width per pyramid level"):
        DPTDecoder(64, 16, "cat", (256, 512, 1024))


# ------------------------------------------------------------------------------------ whole models

# measured with segmentation_models_pytorch 0.5.0, same timm encoder (tu-<name>), default arguments
MODEL_PARAMS = [
    ("PAN", "test_resnet", 466136),
    ("PAN", "test_convnext", 248448),
    ("DeepLabV3", "test_resnet", 2006737),
    ("DeepLabV3", "test_convnext", 1603481),
    ("DeepLabV3Plus", "test_resnet", 980225),
    ("DeepLabV3Plus", "test_convnext", 772329),
    ("UPerNet", "test_resnet", 7257009),
    ("UPerNet", "test_convnext", 6941417),
    ("Segformer", "test_resnet", 804817),
    ("Segformer", "test_convnext", 513945),
    ("Segformer", "mit_b0", 3714401),  # smp-native mit_b0: the paper's SegFormer-B0
]


@pytest.mark.parametrize(("arch", "encoder", "expected"), MODEL_PARAMS)
def test_parameter_parity_with_defaults(arch, encoder, expected):
    assert count(create_model(arch, encoder_name=encoder, encoder_weights=None)) == expected


@pytest.mark.parametrize(
    ("arch", "kwargs", "expected"),
    [  # measured with segmentation_models_pytorch 0.5.0 on tu-test_resnet
        ("PAN", {"decoder_channels": 16}, 421064),
        ("PAN", {"encoder_output_stride": 32}, 466136),
        ("DeepLabV3", {"decoder_aspp_separable": True}, 1419505),
        ("DeepLabV3", {"decoder_channels": 64, "decoder_atrous_rates": (6, 12, 18)}, 609169),
        ("DeepLabV3Plus", {"decoder_aspp_separable": False}, 1567457),
        ("DeepLabV3Plus", {"encoder_output_stride": 8, "decoder_channels": 128}, 564097),
        ("UPerNet", {"decoder_use_norm": "layernorm"}, 7257009),
        ("UPerNet", {"decoder_channels": 64, "classes": 3}, 877939),
        ("Segformer", {"decoder_segmentation_channels": 128}, 506833),
        ("Segformer", {"encoder_name": "mit_b0", "classes": 150}, 3752694),  # ADE20K's 150 classes
        # by hand: each of UPerNet's 12 conv-norm-ReLU blocks trades BN (2*256) for a conv bias (256)
        ("UPerNet", {"decoder_use_norm": "identity"}, 7257009 - 12 * 256),
    ],
)
def test_parameter_parity_with_options(arch, kwargs, expected):
    kwargs = {"encoder_name": "test_resnet", **kwargs}
    assert count(create_model(arch, encoder_weights=None, **kwargs)) == expected


SMALL_DPT = {"decoder_intermediate_channels": (16, 32, 64, 64), "decoder_fusion_channels": 32}
MODELS = [
    ("PAN", "test_resnet", {}),
    ("PAN", "test_convnext", {}),
    ("DeepLabV3", "test_resnet", {}),
    ("DeepLabV3Plus", "test_convnext", {}),
    ("UPerNet", "test_convnext", {}),
    ("Segformer", "test_resnet", {}),
    ("Segformer", "mit_b0", {}),
    ("DPT", "test_vit", SMALL_DPT),
]


def backward_random(outputs: tuple[torch.Tensor, ...]) -> None:
    sum((out * torch.randn_like(out)).sum() for out in outputs).backward()


def biases_before_batchnorm(model: torch.nn.Module) -> set[int]:
    """ids of conv biases directly followed by BatchNorm: in training mode their gradient is exactly zero
    (the batch mean removes them), so they are only required to have a gradient tensor."""
    found = set()
    for module in model.modules():
        children = list(module.children())
        for first, second in zip(children, children[1:], strict=False):
            if isinstance(first, nn.Conv2d) and first.bias is not None and isinstance(second, nn.BatchNorm2d):
                found.add(id(first.bias))
    return found


@pytest.mark.parametrize(("arch", "encoder", "kwargs"), MODELS)
def test_odd_size_aux_head_and_gradients(arch, encoder, kwargs):
    model = create_model(arch, encoder_name=encoder, encoder_weights=None, classes=2,
                         aux_params={"classes": 3, "dropout": 0.1}, **kwargs)
    model.train()
    x = torch.randn(2, 3, 67, 71)
    masks, labels = model(x)
    assert masks.shape == (2, 2, 67, 71)
    assert labels.shape == (2, 3)
    backward_random((masks, labels))
    exempt = biases_before_batchnorm(model)
    for part in ("decoder", "segmentation_head", "classification_head"):
        for name, parameter in getattr(model, part).named_parameters():
            assert parameter.grad is not None, f"{part}.{name} got no gradient"
            assert id(parameter) in exempt or parameter.grad.abs().sum() > 0, f"{part}.{name} got a zero gradient"
    model.eval()
    with torch.no_grad():
        assert model(x[:1, :, :35, :45])[0].shape == (1, 2, 35, 45)


def test_dilated_encoders_follow_output_stride():
    pan = create_model("PAN", encoder_name="test_resnet", encoder_weights=None)
    deeplab = create_model("DeepLabV3", encoder_name="test_resnet", encoder_weights=None)
    plus = create_model("DeepLabV3Plus", encoder_name="test_resnet", encoder_weights=None, encoder_output_stride=8)
    assert max(pan.encoder.reductions) == 16 and pan.required_divisor == 16
    assert max(deeplab.encoder.reductions) == 8 and deeplab.required_divisor == 8
    assert max(plus.encoder.reductions) == 8
    # DeepLabV3's head brings stride 8 back to the input: 64 px -> 8 x 8 -> 64 x 64
    assert deeplab.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    ("arch", "kwargs", "match"),
    [
        ("PAN", {"encoder_output_stride": 8}, "encoder_output_stride"),
        ("DeepLabV3", {"encoder_output_stride": 32}, "encoder_output_stride"),
        ("DeepLabV3Plus", {"encoder_depth": 2}, "encoder_depth"),
        ("DeepLabV3", {"decoder_atrous_rates": (6, 12)}, "decoder_atrous_rates"),
        ("DeepLabV3", {"upsampling": 4}, "upsampling"),
        ("UPerNet", {"decoder_use_norm": "groupnorm"}, "decoder_use_norm"),
        ("PAN", {"decoder_interpolation": "linear"}, "decoder_interpolation"),
    ],
)
def test_bad_arguments_are_clear_errors(arch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(arch, encoder_name="test_resnet", encoder_weights=None, **kwargs)


def test_encoder_that_cannot_dilate_is_the_encoders_error():
    # timm's CoAtNet has no output_stride support, so DeepLabV3's default stride 8 cannot be had
    with pytest.raises(ValueError, match="test_coatnet.*output_stride=8"):
        create_model("DeepLabV3", encoder_name="test_coatnet", encoder_weights=None)


# -------------------------------------------------------------------------------------------------- DPT

# The reference's ViT encoder keeps timm's final LayerNorm and 1000-class head, which DPT never uses; ours
# drops them (docs/DESIGN.md, Encoders): test_vit (embed 64) -> 2 * 64 + 64 * 1000 + 1000 = 65128 fewer.
UNUSED_IN_REFERENCE = 2 * 64 + 64 * 1000 + 1000


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [  # measured with segmentation_models_pytorch 0.5.0 on tu-test_vit (whole model)
        ({}, 28910633),
        ({"decoder_readout": "add"}, 28877609),
        ({"decoder_readout": "ignore"}, 28877609),
        ({"encoder_output_indices": [1, 3, 4, 5]}, 28910633),
        ({"aux_params": {"classes": 3}}, 28910828),
        ({"classes": 4}, 28911404),
        (SMALL_DPT, 673577),
        ({"encoder_depth": 3, "decoder_intermediate_channels": (256, 512, 1024)}, 14611177),
        ({"encoder_depth": 5, "decoder_intermediate_channels": (8, 16, 32, 64, 64)}, 13650617),
    ],
)
def test_dpt_parameter_parity(kwargs, expected):
    model = create_model("DPT", encoder_name="test_vit", encoder_weights=None, **kwargs)
    assert count(model) == expected - UNUSED_IN_REFERENCE
    assert count(model) - count(model.encoder) == expected - 371240  # reference encoder: 371240


def test_dpt_blocks_padding_and_readouts():
    model = create_model("DPT", encoder_name="test_vit", encoder_weights=None, encoder_output_indices=[1, 3, 4, 5],
                         decoder_readout="add", **SMALL_DPT).eval()
    assert model.encoder.out_indices == [1, 3, 4, 5]
    assert model.required_divisor == 16  # the patch size
    assert model(torch.randn(1, 3, 33, 50)).shape == (1, 1, 33, 50)
    default = create_model("DPT", encoder_name="test_vit", encoder_weights=None, **SMALL_DPT)
    assert default.encoder.out_indices == [0, 2, 3, 5]  # 4 of 6 blocks, as the reference picks them


def test_dpt_rejects_other_encoders_and_missing_class_token():
    with pytest.raises(ValueError, match="DPT takes plain ViT-style timm encoders.*test_resnet"):
        create_model("DPT", encoder_name="test_resnet", encoder_weights=None)
    with pytest.raises(ValueError, match="DPT takes plain ViT-style timm encoders.*test_convnext"):
        create_model("DPT", encoder_name="test_convnext", encoder_weights=None)
    with pytest.raises(ValueError, match="encoder_depth"):
        create_model("DPT", encoder_name="test_vit", encoder_weights=None, encoder_depth=3)
    # timm's "gap" ViTs have register tokens but no class token: only the "ignore" readout fits
    with pytest.raises(ValueError, match="needs a class token"):
        create_model("DPT", encoder_name="vit_wee_patch16_reg1_gap_256", encoder_weights=None, **SMALL_DPT)
