"""Draw the worst and best OOF images (image, truth, prediction per class) as PNGs in `outputs/<exp>/viz/`.

Usage: `python scripts/visualize.py --config C [--count 4]` (after `scripts/oof.py`).
"""

from __future__ import annotations

import argparse

from segfold.cli import add_config_arguments, config_from_args, script_main


@script_main
def main(argv: list[str] | None = None) -> list:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--count", type=int, default=4, help="worst and best images to draw (each)")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default outputs/<exp>/viz)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.oof import visualize_oof

    paths = visualize_oof(cfg, count=args.count, out_dir=args.out)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
