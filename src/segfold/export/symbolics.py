"""ONNX translations the TorchScript-based exporter lacks.

``aten::_upsample_bicubic2d_aa``: timm resamples a ViT's position embedding (DPT) to each input's
token grid with antialiased bicubic interpolation, PIL's filter (a = -0.5, weights renormalised at the
borders, widened by 1/scale when shrinking). ONNX ``Resize`` (opset 18) says the same with
``mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1, antialias=1``; the parity check of every
export compares the two (measured: 1e-6 of the logit scale at 16x16 to 224x320 inputs).
"""

from __future__ import annotations

import torch
from torch.onnx import register_custom_op_symbolic
from torch.onnx import symbolic_helper as helper

OPSET = 18
_registered = False


def _bicubic_aa(g, input, output_size, align_corners, scales_h=None, scales_w=None):  # noqa: ANN001 (ONNX graph values)
    def const(values: list[int]):
        return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    lead = g.op("Slice", g.op("Shape", input), const([0]), const([2]))  # (N, C)
    if helper._is_packed_list(output_size):
        parts = [g.op("Unsqueeze", g.op("Cast", v, to_i=7), const([0])) for v in helper._unpack_list(output_size)]
        size = g.op("Concat", *parts, axis_i=0)
    else:
        size = g.op("Cast", output_size, to_i=7)
    sizes = g.op("Concat", lead, size, axis_i=0)  # (N, C, H', W')
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    corners = helper._maybe_get_const(align_corners, "b")
    return g.op("Resize", input, empty, empty, sizes, mode_s="cubic", cubic_coeff_a_f=-0.5, antialias_i=1,
                exclude_outside_i=1, coordinate_transformation_mode_s="align_corners" if corners else "half_pixel")


def register_symbolics() -> None:
    """Register the translations above with ``torch.onnx`` (once per process)."""
    global _registered
    if not _registered:
        register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _bicubic_aa, OPSET)
        _registered = True
