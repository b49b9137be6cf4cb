"""Turn the test store of an experiment (or a blend) into pseudo-labels for the confident test images.

    python scripts/pseudo_label.py --config configs/x.yaml                  # outputs/<exp>/pseudo/
    python scripts/pseudo_label.py --config outputs/blend_ab/config.yaml    # from a blend
    python scripts/pseudo_label.py --config configs/x.yaml --set data.pseudo.confident=0.99 data.pseudo.high=0.95

Then train with them: `--set data.pseudo.path=outputs/<exp>/pseudo data.pseudo.share=0.25`.
"""

from __future__ import annotations

import argparse

from segfold.cli import add_allow_stale, add_config_arguments, config_from_args, script_main


@script_main
def main(argv: list[str] | None = None) -> dict:
    parser = add_allow_stale(add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    parser.add_argument("--output", default=None, help="folder to write (default outputs/<exp>/pseudo)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.pseudo import make_pseudo_labels

    result = make_pseudo_labels(cfg, args.output, allow_stale=args.allow_stale)
    print(f"rule: {result['rule']}")
    print(f"kept {result['kept']} of {result['test_images']} test images ({result['non_empty_masks']} non-empty "
          f"masks, {result['format']} layout) -> {result['folder']}")
    return result


if __name__ == "__main__":
    main()
