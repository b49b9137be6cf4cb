"""segfold.export: ONNX / TorchScript export of trained models, their parity check, and their runtimes."""

from segfold.export.exporter import DEFAULT_TOLERANCE, check_parity, export_model, parity_shapes
from segfold.export.folds import FoldExport, export_folds, export_size, fold_checkpoint_paths, load_exported_folds
from segfold.export.plan import FORMATS, ExportPlan, plan_export, pyramid_bins
from segfold.export.runtime import (
    ExportedModel,
    ExportMeta,
    OnnxModel,
    TorchScriptModel,
    exported_path,
    load_exported,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ExportMeta",
    "ExportPlan",
    "ExportedModel",
    "FoldExport",
    "OnnxModel",
    "TorchScriptModel",
    "check_parity",
    "export_folds",
    "export_model",
    "export_size",
    "fold_checkpoint_paths",
    "exported_path",
    "load_exported",
    "load_exported_folds",
    "parity_shapes",
    "plan_export",
    "pyramid_bins",
]
