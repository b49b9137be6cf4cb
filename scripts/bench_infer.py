"""Inference throughput of one model on PyTorch eager and on onnxruntime (and TorchScript), side by side.

The same model (a trained fold's checkpoint, else the config's model untrained: speed does not depend
on the weights) and the same batch of random normalised images go through each runtime, in alternating
rounds within one run; the figures are medians of the rounds and the ratio is against eager.

    python scripts/bench_infer.py                                  # the demo experiment, fold 0
    python scripts/bench_infer.py --config configs/x.yaml --fold 1 --batch 8 --rounds 10 --torchscript
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from segfold.cli import add_config_arguments, config_from_args, script_main
from segfold.export import export_model, export_size, load_exported
from segfold.export.speed import images_per_second


def load_model(cfg, fold: int) -> tuple[torch.nn.Module, str]:
    """The fold's trained model when its checkpoint exists, else the config's model with random weights."""
    from segfold.models import build_model
    from segfold.probs import load_checkpoint_model

    checkpoint = cfg.experiment.output_dir / f"fold{fold}" / cfg.infer.checkpoint
    if checkpoint.is_file():
        return load_checkpoint_model(checkpoint)[0], str(checkpoint)
    model_cfg = cfg.model.model_copy(update={"encoder_weights": None})
    return build_model(model_cfg, len(cfg.data.classes)).eval(), "untrained (no checkpoint)"


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--fold", type=int, default=0, help="fold whose checkpoint is measured")
    parser.add_argument("--batch", type=int, default=None, help="images per call (default infer.batch_size)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                        help="input size (default data.image_size, capped by infer.tile_size)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per runtime, interleaved")
    parser.add_argument("--torchscript", action="store_true", help="measure TorchScript as well")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    model, source = load_model(cfg, args.fold)
    height, width = model.padded_size(*(args.size or export_size(cfg)))
    batch = args.batch or cfg.infer.batch_size
    images = torch.randn(batch, int(model.config.get("in_channels", 3)), height, width,
                         generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, Path(tmp) / "model.onnx", "onnx", (height, width))
        onnx = load_exported(Path(tmp) / "model.onnx")
        runners = {"pytorch eager": model, "onnxruntime": onnx}
        if args.torchscript:
            export_model(model, Path(tmp) / "model.torchscript.pt", "torchscript", (height, width))
            runners["torchscript"] = load_exported(Path(tmp) / "model.torchscript.pt")
        print(f"{cfg.model.arch}/{cfg.model.encoder_name} ({source}); input {batch}x{images.shape[1]}x{height}x"
              f"{width}; cpu threads {torch.get_num_threads()}; onnxruntime providers {', '.join(onnx.providers)}")
        speed = images_per_second(runners, images, rounds=args.rounds)
    eager = speed["pytorch eager"]
    for name, value in speed.items():
        print(f"{name:14s} {value:9.2f} images/s   x{value / eager:.2f} of eager")


if __name__ == "__main__":
    main()
