"""Export each fold's model to ONNX or TorchScript, checked against PyTorch, next to its checkpoint.

Usage: `python scripts/export.py --config C --format onnx|torchscript [--folds 0,1] [--size H W] [--tolerance 1e-3]`.

Writes `outputs/<exp>/fold<k>/best.onnx` (or `best.torchscript.pt`) with a dynamic batch, and dynamic
height and width where the architecture allows (PSPNet and UPerNet are fixed to the export size:
their pyramid pooling windows depend on it; see `segfold.export.plan`). Each export is run on random
inputs of two shapes and compared with the PyTorch model; the maximum absolute differences are printed.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_config_arguments, config_from_args, parse_folds, script_main
from segfold.export import DEFAULT_TOLERANCE, FORMATS, export_folds


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--format", dest="fmt", choices=FORMATS, required=True)
    parser.add_argument("--folds", default=None, help="folds to export, e.g. 0,1,2 (default infer.folds, else all)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                        help="example input size (default data.image_size, capped by infer.tile_size)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest accepted max abs difference, as a share of the logit scale")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    for done in export_folds(cfg, args.fmt, parse_folds(args.folds), args.size, args.tolerance):
        meta = done.meta
        dims = "batch, height, width" if meta.dynamic_size else \
            f"batch (height x width fixed to {meta.export_size[0]} x {meta.export_size[1]})"
        print(f"fold {done.fold}: {meta.arch} -> {done.path} ({meta.exporter}; dynamic: {dims}; "
              f"sides multiple of {meta.divisor}; outputs {', '.join(meta.outputs)})")
        for reason in meta.reasons:
            print(f"  note: {reason}")
        for entry in meta.parity:
            print(f"  parity {'x'.join(map(str, entry['shape']))}: max abs diff {entry['max_abs_diff']:.3g} "
                  f"(logits up to {entry['max_abs_logit']:.3g})")


if __name__ == "__main__":
    main()
