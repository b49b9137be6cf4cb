"""Build an offline Kaggle inference package: wheels, chosen folds' weights, infer.py / infer.ipynb, runtime estimate.

Usage: `python scripts/package.py --config C [--folds 0,1,2] [--out dist/<exp>-kernel] [--runtime auto|torch|onnx]`.

Needs trained folds (and the full-data fit, `train.py --fold full`, with `infer.models: full|both`) and
`outputs/<exp>/thresholds.json` (scripts/tune_thresholds.py). The folder is
ready to upload as a Kaggle dataset; its README says how to run it and how long it should take.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_config_arguments, config_from_args, parse_folds, script_main


@script_main
def main(argv: list[str] | None = None) -> dict:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--folds", default=None, help="folds to ship, e.g. 0,1,2 (default infer.folds, else all)")
    parser.add_argument("--out", default=None, help="package folder (default dist/<experiment>-kernel)")
    parser.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=None,
                        help="what runs the models in the kernel (default package.runtime: auto = the faster)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.package.build import build_package

    facts = build_package(cfg, parse_folds(args.folds), args.out, args.runtime, args.config or "")
    for name, timing in facts["timings"].items():
        print(f"{name}: {timing['images']} test images in {timing['seconds']:.1f}s "
              f"({timing['per_image']:.3f} s/image, model loading included)")
    for note in facts["notes"]:
        print(f"note: {note}")
    print(f"runtime: {facts['runtime']}; estimate for {facts['test_images']} test images "
          f"({facts['test_images_source']}): {facts['estimate_minutes']:.1f} min on {facts['device']}")
    full = f" + full/{facts['full']}" if facts["full"] else ""
    print(f"package: {facts['out']} (folds {facts['folds']}{full}; {len(facts['wheels'])} wheels: "
          f"{', '.join(facts['wheels'])})")
    return facts


if __name__ == "__main__":
    main()
