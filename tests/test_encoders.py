"""Encoders: feature shapes, depth, dilation, aliases, weights files and the offline error."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from segfold.encoders import (
    ENCODER_ALIASES,
    get_encoder,
    get_preprocessing_params,
    get_vit_encoder,
    list_encoders,
    resolve_encoder_name,
)
from segfold.encoders import weights as weights_module
from segfold.errors import WeightsError

SIZE = 64


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes(features: list[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(f.shape) for f in features]


# out_channels measured with segmentation_models_pytorch 0.5.0 (`tu-<name>`, same timm encoder).
@pytest.mark.parametrize(
    "name, channels",
    [
        ("test_resnet", [3, 32, 32, 48, 192, 96]),
        ("test_efficientnet", [3, 16, 24, 32, 48, 64]),
        ("test_convnext", [3, 0, 24, 32, 48, 64]),  # first feature at stride 4: empty stride-2 map
    ],
)
def test_feature_shapes(name: str, channels: list[int]) -> None:
    encoder = get_encoder(name, depth=5)
    assert encoder.out_channels == channels
    assert encoder.reductions == [1, 2, 4, 8, 16, 32]
    assert encoder.output_stride == 32
    x = torch.rand(2, 3, SIZE, SIZE)
    features = encoder(x)
    # spatial size = 64 / reduction
    assert shapes(features) == [
        (2, c, SIZE // r, SIZE // r) for c, r in zip(channels, [1, 2, 4, 8, 16, 32], strict=True)
    ]
    assert features[0] is x


def test_parameter_count_matches_reference() -> None:
    # measured with segmentation_models_pytorch 0.5.0, same timm encoder (tu-test_resnet, depth 5 / 4 / 3)
    assert n_params(get_encoder("test_resnet", depth=5)) == 372688
    assert n_params(get_encoder("test_resnet", depth=4)) == 104848
    assert n_params(get_encoder("test_resnet", depth=3)) == 62416


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_truncates(name: str, depth: int) -> None:
    full = get_encoder(name, depth=5)
    encoder = get_encoder(name, depth=depth)
    assert encoder.out_channels == full.out_channels[: depth + 1]
    assert encoder.reductions == [1, 2, 4, 8, 16, 32][: depth + 1]
    assert encoder.output_stride == 2**depth
    features = encoder(torch.rand(1, 3, SIZE, SIZE))
    assert len(features) == depth + 1
    assert [f.shape[-1] for f in features] == [SIZE // r for r in [1, 2, 4, 8, 16, 32][: depth + 1]]
    if depth < 5:
        assert n_params(encoder) < n_params(full)  # later stages are not built


@pytest.mark.parametrize(
    "output_stride, reductions",
    [(16, [1, 2, 4, 8, 16, 16]), (8, [1, 2, 4, 8, 8, 8])],
)
def test_output_stride_dilates(output_stride: int, reductions: list[int]) -> None:
    encoder = get_encoder("test_resnet", output_stride=output_stride)
    assert encoder.output_stride == output_stride
    assert encoder.reductions == reductions
    features = encoder(torch.rand(1, 3, SIZE, SIZE))
    assert [f.shape[-1] for f in features] == [SIZE // r for r in reductions]
    # dilation changes strides, not weights: same parameter count as undilated
    assert n_params(encoder) == n_params(get_encoder("test_resnet"))


@pytest.mark.parametrize("name", ["densenet121", "vgg11", "tu-test_vit"])
def test_output_stride_not_supported(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        get_encoder(name, output_stride=16)


def test_plain_vit_is_not_a_pyramid_encoder() -> None:
    with pytest.raises(ValueError, match="get_vit_encoder"):
        get_encoder("test_vit")


def test_bad_depth_and_stride() -> None:
    with pytest.raises(ValueError, match="depth"):
        get_encoder("test_resnet", depth=6)
    with pytest.raises(ValueError, match="output_stride"):
        get_encoder("test_resnet", output_stride=4)


def test_aliases_resolve() -> None:
    assert resolve_encoder_name("resnet18") == "resnet18"
    assert resolve_encoder_name("efficientnet-b0") == "efficientnet_b0"
    assert resolve_encoder_name("timm-efficientnet-b0") == "tf_efficientnet_b0"
    assert resolve_encoder_name("se_resnext50_32x4d") == "legacy_seresnext50_32x4d"
    assert resolve_encoder_name("tu-test_resnet") == "test_resnet"
    assert resolve_encoder_name("convnext_tiny") == "convnext_tiny"
    missing = {alias: target for alias, target in ENCODER_ALIASES.items() if not timm.is_model(target)}
    assert missing == {}
    names = list_encoders()
    assert "resnet34" in names and "mit_b0" in names and names == sorted(names)


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match="resnet34") as info:
        get_encoder("resnet43")
    assert "list_encoders" in str(info.value)


def test_preprocessing_params() -> None:
    # timm's test_resnet.r160_in1k was trained with mean = std = 0.5; resnet18's default tag with ImageNet stats
    assert get_preprocessing_params("test_resnet") == {"mean": [0.5] * 3, "std": [0.5] * 3, "input_range": [0, 1]}
    params = get_preprocessing_params("resnet18", "imagenet")
    assert params["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert params["std"] == pytest.approx([0.229, 0.224, 0.225])
    with pytest.raises(WeightsError, match="tags"):
        get_preprocessing_params("resnet18", "no_such_tag")


def _first_conv(encoder: torch.nn.Module) -> torch.Tensor:
    return encoder.model.conv1[0].weight  # test_resnet: deep stem, conv1 is Sequential(conv, bn, act, ...)


def test_in_channels_adapt_own_weights(tmp_path) -> None:
    source = get_encoder("test_resnet")
    path = tmp_path / "encoder.pth"
    torch.save(source.state_dict(), path)
    w = _first_conv(source).detach()  # (out, 3, k, k)

    one = get_encoder("test_resnet", in_channels=1, weights=path)
    torch.testing.assert_close(_first_conv(one), w.sum(dim=1, keepdim=True))
    # timm's rule for 4 channels: tile the RGB kernel (R, G, B, R) and scale by 3 / 4
    four = get_encoder("test_resnet", in_channels=4, weights=path)
    torch.testing.assert_close(_first_conv(four), torch.cat([w, w[:, :1]], dim=1) * 3 / 4)
    assert four(torch.rand(1, 4, SIZE, SIZE))[-1].shape == (1, 96, 2, 2)
    # the rest is copied unchanged
    torch.testing.assert_close(one.model.layer4[0].conv1.weight, source.model.layer4[0].conv1.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_timm_classifier_weights(tmp_path, suffix: str) -> None:
    classifier = timm.create_model("test_resnet")
    path = tmp_path / f"classifier{suffix}"
    if suffix == ".safetensors":
        save_file(classifier.state_dict(), str(path))
    else:
        torch.save({"state_dict": classifier.state_dict()}, path)  # a wrapped checkpoint
    encoder = get_encoder("test_resnet", in_channels=1, weights=path)
    torch.testing.assert_close(_first_conv(encoder), classifier.conv1[0].weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(encoder.model.layer3[0].conv2.weight, classifier.layer3[0].conv2.weight)


def test_weights_that_do_not_fit(tmp_path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(path))
    with pytest.raises(WeightsError, match="do not fit encoder 'test_efficientnet'"):
        get_encoder("test_efficientnet", weights=path)
    own = get_encoder("test_resnet").state_dict()
    del own["model.layer2.0.conv1.weight"]
    torch.save(own, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match=r"1 missing keys \[model.layer2.0.conv1.weight\]"):
        get_encoder("test_resnet", weights=tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        get_encoder("test_resnet", weights=tmp_path / "nothing.pth")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_offline_error_is_fast_and_helpful(empty_caches, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        get_encoder("resnet18", weights="imagenet")
    assert time.monotonic() - start < 30  # a bound against hanging, not a speed test
    message = str(info.value)
    assert "encoder_weights" in message and "timm/resnet18.a1_in1k" in message and "TORCH_HOME" in message


def test_unreachable_hub_fails_within_seconds(empty_caches, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # `.invalid` never resolves (RFC 2606), like any host on a machine without network
    monkeypatch.setattr(weights_module, "_PROBE_URL", "https://hub.invalid")
    start = time.monotonic()
    with pytest.raises(WeightsError, match="cannot be reached"):
        get_encoder("test_resnet", weights="imagenet")
    assert time.monotonic() - start < 30


def test_cached_pretrained_weights_are_used(empty_caches, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classifier = timm.create_model("test_resnet")
    # the layout huggingface_hub writes: models--<org>--<name>/refs/main + snapshots/<commit>/<file>
    repo = empty_caches / "hf" / "models--timm--test_resnet.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(classifier.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    encoder = get_encoder("test_resnet", weights="imagenet")
    torch.testing.assert_close(_first_conv(encoder), classifier.conv1[0].weight)
    tagged = get_encoder("test_resnet", in_channels=1, weights="r160_in1k")  # the same file by its timm tag
    torch.testing.assert_close(_first_conv(tagged), classifier.conv1[0].weight.sum(dim=1, keepdim=True))
    with pytest.raises(WeightsError, match="tags"):
        get_encoder("test_resnet", weights="no_such_tag")


# ---- Mix Transformer (SegFormer) ----


def test_mit_b0_shapes_and_parameter_count() -> None:
    encoder = get_encoder("mit_b0")
    # widths of mit_b0 in the SegFormer paper: 32, 64, 160, 256 at strides 4..32; stride 2 is empty
    assert encoder.out_channels == [3, 0, 32, 64, 160, 256]
    assert encoder.reductions == [1, 2, 4, 8, 16, 32]
    features = encoder(torch.rand(2, 3, SIZE, SIZE))
    assert shapes(features) == [
        (2, 3, 64, 64),
        (2, 0, 32, 32),
        (2, 32, 16, 16),
        (2, 64, 8, 8),
        (2, 160, 4, 4),
        (2, 256, 2, 2),
    ]
    # measured with segmentation_models_pytorch 0.5.0 (smp.Unet("mit_b0").encoder)
    assert n_params(encoder) == 3319392
    # one input channel instead of three removes 2 * 32 * 7 * 7 = 3136 weights of the 7x7 patch embedding
    assert n_params(get_encoder("mit_b0", in_channels=1)) == 3319392 - 3136


def test_mit_structure_follows_the_paper() -> None:
    encoder = get_encoder("mit_b0")
    # efficient attention: keys/values reduced by 8, 4, 2 per side in stages 1-3, not at all in stage 4
    assert [
        encoder.block1[0].attn.sr.kernel_size,
        encoder.block2[0].attn.sr.kernel_size,
        encoder.block3[0].attn.sr.kernel_size,
    ] == [(8, 8), (4, 4), (2, 2)]
    assert not hasattr(encoder.block4[0].attn, "sr")
    assert [encoder.block1[0].attn.num_heads, encoder.block4[0].attn.num_heads] == [1, 8]
    # Mix-FFN: hidden width 4 * 32 with a 3x3 depthwise conv
    dwconv = encoder.block1[0].mlp.dwconv.dwconv
    assert (dwconv.in_channels, dwconv.groups, dwconv.kernel_size) == (128, 128, (3, 3))
    # drop path rises linearly from 0 to 0.1 over the 8 blocks: block 2 of 8 drops 0.1 / 7
    assert encoder.block1[1].drop_path.drop_prob == pytest.approx(0.1 / 7)


def test_mit_depth_dilation_and_weights(tmp_path) -> None:
    encoder = get_encoder("mit_b0", depth=3)
    assert encoder.out_channels == [3, 0, 32, 64]
    assert not hasattr(encoder, "block3")
    assert shapes(encoder(torch.rand(1, 3, SIZE, SIZE)))[-1] == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="mit_b0"):
        get_encoder("mit_b0", output_stride=16)
    with pytest.raises(WeightsError, match="local file"):
        get_encoder("mit_b0", weights="imagenet")
    source = get_encoder("mit_b0")
    state = source.state_dict()
    state["head.weight"] = torch.zeros(1000, 256)  # an ImageNet classifier head is dropped silently
    save_file(state, str(tmp_path / "mit_b0.safetensors"))
    one = get_encoder("mit_b0", in_channels=1, weights=tmp_path / "mit_b0.safetensors")
    kernel = source.patch_embed1.proj.weight
    torch.testing.assert_close(one.patch_embed1.proj.weight, kernel.sum(dim=1, keepdim=True))
    torch.testing.assert_close(one.block4[1].mlp.fc2.weight, source.block4[1].mlp.fc2.weight)


# ---- plain ViT for DPT ----


def test_vit_encoder_features_match_timm(tmp_path) -> None:
    reference = timm.create_model("test_vit", dynamic_img_size=True).eval()
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    encoder = get_vit_encoder("test_vit", weights=tmp_path / "vit.pth").eval()
    # test_vit has 6 blocks; 4 evenly spaced ending at the last: 6 * k // 4 - 1 for k = 1..4
    assert encoder.out_indices == [0, 2, 3, 5]
    assert (encoder.embed_dim, encoder.patch_size, encoder.num_prefix_tokens) == (64, 16, 1)
    assert encoder.out_channels == [64] * 4 and encoder.output_stride == 16
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        features, prefix = encoder(x)
        expected = reference.forward_intermediates(
            x, indices=[0, 2, 3, 5], return_prefix_tokens=True, intermediates_only=True
        )
    assert shapes(features) == [(2, 64, 4, 6)] * 4 and shapes(prefix) == [(2, 1, 64)] * 4
    for (spatial, tokens), got, got_prefix in zip(expected, features, prefix, strict=True):
        torch.testing.assert_close(got, spatial)
        torch.testing.assert_close(got_prefix, tokens)


def test_vit_encoder_options(tmp_path) -> None:
    classifier = timm.create_model("test_vit")
    save_file(classifier.state_dict(), str(tmp_path / "vit.safetensors"))
    encoder = get_vit_encoder("tu-test_vit", in_channels=1, out_indices=[1, 3], weights=tmp_path / "vit.safetensors")
    assert encoder.out_indices == [1, 3] and len(encoder.model.blocks) == 4  # blocks after 3 are not kept
    torch.testing.assert_close(
        encoder.model.patch_embed.proj.weight, classifier.patch_embed.proj.weight.sum(dim=1, keepdim=True)
    )
    features, _ = encoder(torch.rand(1, 1, 32, 32))
    assert shapes(features) == [(1, 64, 2, 2)] * 2
    with pytest.raises(ValueError, match="patch size 16"):
        encoder(torch.rand(1, 1, 40, 40))
    with pytest.raises(ValueError, match="out_indices"):
        get_vit_encoder("test_vit", out_indices=[7])
    with pytest.raises(ValueError, match="not a plain ViT"):
        get_vit_encoder("test_resnet")


def test_channels_last_features_become_nchw() -> None:
    # timm's MambaOut gives (N, H, W, C) features starting at stride 4
    reference = timm.create_model("test_mambaout", features_only=True).eval()
    channels = reference.feature_info.channels()
    encoder = get_encoder("test_mambaout").eval()
    encoder.model.load_state_dict(reference.state_dict())
    assert encoder.out_channels == [3, 0, *channels]
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        features = encoder(x)
        expected = [f.permute(0, 3, 1, 2) for f in reference(x)]  # NHWC -> NCHW
    assert shapes(features) == [
        (1, c, SIZE // r, SIZE // r) for c, r in zip(encoder.out_channels, [1, 2, 4, 8, 16, 32], strict=True)
    ]
    for got, want in zip(features[2:], expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_every_alias_target_supports_features_only() -> None:
    # built on the meta device: structure only, no memory or time for the big ones (~10 s for all)
    bad = {}
    for target in sorted(set(ENCODER_ALIASES.values())):
        with torch.device("meta"):
            reductions = timm.create_model(target, features_only=True).feature_info.reduction()
        if not {4, 8, 16, 32} <= set(reductions):
            bad[target] = reductions
    assert bad == {}
