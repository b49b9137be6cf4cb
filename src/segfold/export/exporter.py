"""Export a segfold model to ONNX or TorchScript and check it against PyTorch.

``export_model`` writes the graph without the model's internal padding (``pad_input = False``; the
runtime of ``segfold.export.runtime`` pads), with a dynamic batch and, where ``plan_export`` allows,
dynamic height and width. Before the file takes its final name it is loaded back through its runtime
and compared with the PyTorch model on random inputs of two shapes; the maximum absolute differences
are returned, stored in the file's metadata, and a difference above the tolerance is an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segfold.errors import ExportError
from segfold.export.plan import ExportPlan, plan_export
from segfold.export.pooling import fixed_pyramid_pooling
from segfold.export.runtime import (
    INPUT_NAME,
    META_KEY,
    TORCHSCRIPT_META,
    ExportedModel,
    ExportMeta,
    OnnxModel,
    TorchScriptModel,
)
from segfold.export.symbolics import OPSET, register_symbolics
from segfold.io import atomic_path
from segfold.models.outputs import unpack_outputs

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-3


@contextlib.contextmanager
def _export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode without internal padding, restored afterwards."""
    was_training, padded = model.training, getattr(model, "pad_input", False)
    model.eval()
    model.pad_input = False
    try:
        yield model
    finally:
        model.pad_input = padded
        model.train(was_training)


def _output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    with torch.no_grad():
        out = unpack_outputs(model(example))
    return ["masks"] if out.labels is None else ["masks", "labels"]


@contextlib.contextmanager
def _level(name: str, level: int) -> Iterator[None]:
    log = logging.getLogger(name)
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings about traced shape arithmetic and their own deprecations."""
    with (warnings.catch_warnings(), _level("torch.onnx", logging.ERROR), _level("torch.export", logging.ERROR),
          _level("onnxscript", logging.ERROR), _level("onnx_ir", logging.ERROR)):
        warnings.simplefilter("ignore")
        yield


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, plan: ExportPlan, outputs: list[str]) -> None:
    import onnx

    if plan.exporter == "torchscript-onnx":
        register_symbolics()
        dims = {0: "batch", 2: "height", 3: "width"} if plan.dynamic_size else {0: "batch"}
        axes = {INPUT_NAME: dims, "masks": dims}
        if "labels" in outputs:
            axes["labels"] = {0: "batch"}
        # NOTE a graph of fixed size replaces pyramid pooling by fixed matrices (see segfold.export.pooling)
        pooling = contextlib.nullcontext() if plan.dynamic_size else fixed_pyramid_pooling(model, example)
        with _quiet(), pooling:
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=outputs, dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True)
    else:
        from torch.export import Dim

        spec: dict[int, Any] = {0: Dim("batch", min=1, max=4096)}
        if plan.dynamic_size:
            spec.update({2: Dim.AUTO, 3: Dim.AUTO})
        with _quiet():
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=outputs, dynamic_shapes=({**spec},), opset_version=OPSET,
                                        verbose=False)
            program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: ExportMeta
                        ) -> torch.jit.ScriptModule:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: meta.to_json()})
    return traced


def _write_meta(path: Path, meta: ExportMeta, traced: torch.jit.ScriptModule | None) -> None:
    if meta.format == "torchscript":
        with _quiet():
            torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: meta.to_json()})
        return
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, meta.to_json()
    onnx.save(proto, str(path))


def parity_shapes(plan: ExportPlan, size: Sequence[int], channels: int) -> list[tuple[int, int, int, int]]:
    """Two input shapes for the parity check: the export size with batch 1, and batch 2 at another size
    (one divisor taller, two wider) where the size is dynamic, else at the same size."""
    height, width = int(size[0]), int(size[1])
    if plan.dynamic_size:
        return [(1, channels, height, width), (2, channels, height + plan.divisor, width + 2 * plan.divisor)]
    return [(1, channels, height, width), (2, channels, height, width)]


def check_parity(model: nn.Module, runtime: ExportedModel, shapes: Sequence[Sequence[int]], seed: int = 0
                 ) -> list[dict[str, Any]]:
    """Max absolute difference between the PyTorch model and an exported runtime on random inputs.

    Returns:
        One entry per shape: ``{"shape", "max_abs_diff", "max_abs_logit"}`` over every output.
    """
    generator = torch.Generator().manual_seed(seed)
    results = []
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = unpack_outputs(model(x))
            got = unpack_outputs(runtime(x))
        pairs = [(expected.masks, got.masks)]
        if expected.labels is not None:
            if got.labels is None:
                raise ExportError(f"{runtime.path}: the export lost the aux head's labels output")
            pairs.append((expected.labels, got.labels))
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in pairs)
        scale = max(float(a.float().abs().max()) for a, _ in pairs)
        results.append({"shape": list(shape), "max_abs_diff": diff, "max_abs_logit": scale})
    return results


def _versions() -> dict[str, str]:
    import segfold

    versions = {"segfold": segfold.__version__, "torch": torch.__version__}
    with contextlib.suppress(ImportError):
        import onnx

        versions["onnx"] = onnx.__version__
    return versions


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str, size: Sequence[int], *,
                 tolerance: float = DEFAULT_TOLERANCE, source: str = "", source_sha256: str = "") -> ExportMeta:
    """Export ``model`` to ``path`` and check it against PyTorch.

    Args:
        model: a ``SegmentationModel`` (its weights as they are; the model is left as it was).
        path: the file to write (``.onnx`` or ``.torchscript.pt``), atomically.
        fmt: "onnx" or "torchscript".
        size: ``(height, width)`` of the example input, padded up to the model's divisor; the fixed
            size where the architecture cannot take others.
        tolerance: largest accepted ``max_abs_diff / max(1, max_abs_logit)`` of the parity check.
        source: the checkpoint the model came from (recorded in the metadata).
        source_sha256: its checksum (recorded; prediction checks an export is not stale with it).

    Returns:
        The metadata written into the file, ``parity`` included.

    Raises:
        ExportError: the exporter failed, or the parity check found a larger difference.
    """
    path = Path(path)
    plan = plan_export(model, fmt)
    channels = int(model.config.get("in_channels", 3))
    height, width = model.padded_size(int(size[0]), int(size[1]))
    meta = ExportMeta(format=fmt, arch=type(model).__name__, exporter=plan.exporter, divisor=plan.divisor,
                      pad_mode=model.pad_mode, dynamic_size=plan.dynamic_size, export_size=[height, width],
                      outputs=[], model_config=model.config, normalisation=model.pretrained_cfg, source=source,
                      source_sha256=source_sha256, reasons=list(plan.reasons), versions=_versions())
    meta.model_config.pop("arch", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _export_mode(model), atomic_path(path) as tmp:
        example = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(1))
        meta.outputs = _output_names(model, example)
        traced = None
        try:
            if fmt == "onnx":
                try:
                    _export_onnx(model, example, tmp, plan, meta.outputs)
                except torch.onnx.errors.OnnxExporterError as error:
                    if plan.exporter != "torchscript-onnx":
                        raise
                    reason = f"the TorchScript-based exporter failed ({str(error).splitlines()[0][:200]})"
                    logger.warning("%s: %s; trying the torch.export-based exporter", meta.arch, reason)
                    plan = replace(plan, exporter="dynamo-onnx", reasons=(*plan.reasons, reason))
                    meta.exporter, meta.reasons = plan.exporter, list(plan.reasons)
                    _export_onnx(model, example, tmp, plan, meta.outputs)
                _write_meta(tmp, meta, None)
                runtime: ExportedModel = OnnxModel(tmp)
            else:
                traced = _export_torchscript(model, example, tmp, meta)
                runtime = TorchScriptModel(tmp)
        except ExportError:
            raise
        except Exception as error:  # noqa: BLE001  (exporters raise many kinds)
            raise ExportError(f"{meta.arch} could not be exported to {fmt} with {plan.exporter}: "
                              f"{type(error).__name__}: {str(error)[:500]}") from error
        meta.parity = check_parity(model, runtime, parity_shapes(plan, (height, width), channels))
        del runtime
        for entry in meta.parity:
            logger.debug("%s %s parity %s: max abs diff %.3g (logits up to %.3g)", meta.arch, fmt,
                        "x".join(map(str, entry["shape"])), entry["max_abs_diff"], entry["max_abs_logit"])
            if entry["max_abs_diff"] > tolerance * max(1.0, entry["max_abs_logit"]):
                raise ExportError(f"{meta.arch} {fmt} export differs from PyTorch by {entry['max_abs_diff']:.3g} "
                                  f"on a {'x'.join(map(str, entry['shape']))} input (tolerance {tolerance:g} of the "
                                  f"logit scale {entry['max_abs_logit']:.3g}); the file was not written")
        _write_meta(tmp, meta, traced)
    return meta
