"""What an exported graph can leave open: which input dimensions stay dynamic, and which ONNX exporter to use.

Every architecture exports with a dynamic batch. Height and width stay dynamic (any multiple of the
model's ``required_divisor``) except where the architecture's graph depends on the input size in a
way ONNX cannot express:

- **Pyramid pooling** (PSPNet's and UPerNet's ``AdaptiveAvgPool2d`` to 2, 3 and 6 bins): ONNX has no
  adaptive pooling. A bin's window is computed from the input size, so an ONNX graph holds the
  windows of one size. The TorchScript-based exporter refuses dynamic sizes here, and the
  torch.export-based one silently bakes in the windows of the example size (measured: logits off by
  0.09-0.17 at another size). Such models are exported for one height and width (the inference size
  of the config); the batch stays dynamic. For the export each such pooling layer is replaced by
  two fixed averaging matrices of its input size (``FixedAveragePool``: the same windows, as two
  MatMuls), which the fast TorchScript-based exporter takes. Pooling to one bin (global pooling:
  DeepLabV3, PAN, MAnet, aux heads) is ``GlobalAveragePool`` and stays dynamic.

DPT's ViT resamples its position embedding per input size with antialiased bicubic interpolation;
``segfold.export.symbolics`` translates that to ONNX ``Resize`` so DPT stays dynamic too. Should the
TorchScript-based exporter meet another operator it cannot translate (some timm encoder), the export
falls back to the torch.export-based exporter (``onnxscript``; minutes instead of seconds), and says so.

TorchScript (``torch.jit.trace``) records the size-dependent operators themselves and stays dynamic
for every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

FORMATS = ("onnx", "torchscript")
Exporter = Literal["torchscript-onnx", "dynamo-onnx", "jit-trace"]


@dataclass(frozen=True)
class ExportPlan:
    """How one model is exported.

    Attributes:
        format: "onnx" or "torchscript".
        dynamic_size: height and width are free (multiples of ``divisor``); else fixed to the export size.
        exporter: "torchscript-onnx" (``torch.onnx.export(dynamo=False)``), "dynamo-onnx"
            (``torch.onnx.export(dynamo=True)``) or "jit-trace" (``torch.jit.trace``).
        divisor: input sides must be multiples of it (the runtime pads up to it).
        reasons: why a dimension is fixed or why the slower exporter is used; empty when neither.
    """

    format: str
    dynamic_size: bool
    exporter: Exporter
    divisor: int
    reasons: tuple[str, ...] = field(default=())


def _bins(output_size: int | tuple[int | None, ...] | None) -> tuple[int | None, ...]:
    return (output_size, output_size) if isinstance(output_size, int) or output_size is None else tuple(output_size)


def pyramid_bins(model: nn.Module, pools: tuple[type, ...] = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
                 ) -> list[tuple[int | None, ...]]:
    """The output sizes of the model's adaptive pooling layers (of the types ``pools``) other than 1x1."""
    return sorted({_bins(m.output_size) for m in model.modules()
                   if isinstance(m, pools) and _bins(m.output_size) != (1, 1)}, key=str)


def plan_export(model: nn.Module, fmt: str) -> ExportPlan:
    """The export plan of a segfold model for ``fmt`` ("onnx" or "torchscript"); see the module docstring."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    arch = type(model).__name__
    divisor = int(getattr(model, "required_divisor", 1))
    if fmt == "torchscript":
        return ExportPlan(fmt, True, "jit-trace", divisor)
    reasons: list[str] = []
    bins = pyramid_bins(model)
    if bins:
        shown = ", ".join("x".join(str(b) for b in size) for size in bins)
        reasons.append(f"{arch} pools to fixed bins ({shown}) whose windows depend on the input size; ONNX has no "
                       "adaptive pooling, so height and width are fixed to the export size (batch stays dynamic)")
    exporter: Exporter = "torchscript-onnx"
    if pyramid_bins(model, (nn.AdaptiveMaxPool2d,)):
        # NOTE only average pooling has a fixed-matrix replacement; the torch.export-based exporter
        # decomposes adaptive max pooling for a fixed size.
        exporter = "dynamo-onnx"
    return ExportPlan(fmt, not bins, exporter, divisor, tuple(reasons))
