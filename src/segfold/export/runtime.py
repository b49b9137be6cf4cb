"""Run an exported model (ONNX on onnxruntime, or TorchScript) where a segfold model would run.

``load_exported(path)`` returns an ``nn.Module`` that behaves like the ``SegmentationModel`` it came
from for inference: it takes normalised ``(N, C, H, W)`` float tensors, pads the bottom and right up
to the model's divisor (the graph itself takes no padding), crops the outputs back, and returns the
mask logits, or ``(masks, labels)`` with an aux head. It carries ``pretrained_cfg`` (normalisation)
and ``config`` (``arch``, ``in_channels``, ...), so TTA, tiling and fold averaging use it unchanged.

The export metadata travels inside the file: the ONNX model's ``metadata_props["segfold"]`` and the
TorchScript archive's ``extra/segfold.json``, both the JSON of ``ExportMeta``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segfold.errors import WeightsError
from segfold.models.base import pad_to_divisor

META_KEY = "segfold"
TORCHSCRIPT_META = "segfold.json"
INPUT_NAME = "images"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


@dataclass
class ExportMeta:
    """What a runtime needs to know about an exported model, stored in the exported file."""

    format: str
    arch: str
    exporter: str
    divisor: int
    pad_mode: str
    dynamic_size: bool
    export_size: list[int]
    outputs: list[str]
    model_config: dict[str, Any]
    normalisation: dict[str, Any]
    source: str = ""
    source_sha256: str = ""
    reasons: list[str] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | os.PathLike) -> ExportMeta:
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as error:
            raise WeightsError(f"{source}: export metadata is unreadable ({error}); re-export it with "
                               "scripts/export.py") from error


def exported_path(checkpoint: str | os.PathLike, fmt: str) -> Path:
    """Where the export of ``checkpoint`` in ``fmt`` lives: next to it, same stem (``best.pt`` -> ``best.onnx``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[fmt])


class ExportedModel(nn.Module):
    """Base of the runtimes: padding, cropping and the attributes the prediction code reads."""

    def __init__(self, meta: ExportMeta, path: Path) -> None:
        super().__init__()
        self.meta = meta
        self.path = path
        self.required_divisor = meta.divisor

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return dict(self.meta.normalisation)

    @property
    def config(self) -> dict[str, Any]:
        return {"arch": self.meta.arch, **self.meta.model_config}

    def _run(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        height, width = x.shape[-2:]
        x = pad_to_divisor(x, self.meta.divisor, self.meta.pad_mode)
        if not self.meta.dynamic_size and list(x.shape[-2:]) != self.meta.export_size:
            size = "x".join(map(str, self.meta.export_size))
            raise ValueError(f"{self.path}: this {self.meta.arch} graph takes {size} inputs only (its size is fixed: "
                             f"{'; '.join(self.meta.reasons)}); got {height}x{width} (padded {x.shape[-2]}x"
                             f"{x.shape[-1]}). Re-export with --size for this size, predict in tiles of it "
                             "(infer.tile_size), or avoid size-changing TTA (scales, d4 on non-square images)")
        outputs = self._run(x)
        masks = outputs[0][..., :height, :width]
        return masks if len(outputs) == 1 else (masks, outputs[1])


class OnnxModel(ExportedModel):
    """An ONNX export run by onnxruntime (CUDA provider when asked for and available, else CPU)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: no such ONNX file; export it with scripts/export.py --format onnx")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if META_KEY not in props:
            raise WeightsError(f"{path}: not a segfold export (no '{META_KEY}' metadata); export it with "
                               "scripts/export.py --format onnx")
        super().__init__(ExportMeta.from_json(props[META_KEY], path), path)
        self.device = torch.device(device)
        options = ort.SessionOptions()
        # NOTE one process's threads must fit the cores it shares (torch's own setting says how many)
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()

    def _run(self, images: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        outputs = self.session.run(None, {INPUT_NAME: array})
        return [torch.from_numpy(out).to(images.device) for out in outputs]


class TorchScriptModel(ExportedModel):
    """A TorchScript export (``torch.jit.load``)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: no such TorchScript file; export it with scripts/export.py --format "
                               "torchscript")
        extra = {TORCHSCRIPT_META: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # NOTE torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        if not extra[TORCHSCRIPT_META]:
            raise WeightsError(f"{path}: not a segfold export (no {TORCHSCRIPT_META} inside); export it with "
                               "scripts/export.py --format torchscript")
        super().__init__(ExportMeta.from_json(extra[TORCHSCRIPT_META], path), path)
        self.module = module.eval()

    def _run(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.module(images)
        return list(out) if isinstance(out, (tuple, list)) else [out]


def load_exported(path: str | os.PathLike, device: str | torch.device = "cpu") -> ExportedModel:
    """The runtime for an exported file, by its suffix (``.onnx`` or ``.torchscript.pt``), in eval mode."""
    path = Path(path)
    if path.name.endswith(SUFFIXES["onnx"]):
        return OnnxModel(path, device).eval()
    if path.name.endswith(SUFFIXES["torchscript"]):
        return TorchScriptModel(path, device).eval()
    raise WeightsError(f"{path}: unknown export suffix; expected {' or '.join(SUFFIXES.values())}")
