"""Write the synthetic demo competition (the default data of every config) to input/demo/.

    python scripts/make_demo_data.py [--root input/demo] [--seed 0] [--n-train 300] [--n-test 100]
"""

from __future__ import annotations

import argparse

from segfold.cli import script_main
from segfold.config import repo_root
from segfold.config.data import DataConfig
from segfold.data.demo import make_demo_data


@script_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="output folder (default: the default data.root, input/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=100)
    args = parser.parse_args()
    root = args.root if args.root is not None else DataConfig().resolve_paths(repo_root()).root_path
    path = make_demo_data(root, seed=args.seed, n_train=args.n_train, n_test=args.n_test)
    print(f"wrote the demo competition to {path} ({args.n_train} training and {args.n_test} test images)")


if __name__ == "__main__":
    main()
