"""The texts of a package's `infer.py`, `infer.ipynb` and `README.md`."""

from __future__ import annotations

import json

INFER_PY = '''\
"""Offline Kaggle inference for the segfold experiment {name!r} (written by scripts/package.py).

    python infer.py [INPUT] [--out submission.csv] [--work segfold_work] [--no-install]

INPUT is the competition's data folder (default {default_input}). The wheels in wheels/ are installed
with `pip install --no-index` (checked against wheels/SHA256SUMS first); nothing reaches the network.
"""

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
DEFAULT_INPUT = {default_input!r}


def check_wheels(folder):
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"error: {{folder / name}} is damaged (checksum differs); re-upload the package")


def install_wheels(package):
    wheels = package / "wheels"
    check_wheels(wheels)
    # --no-deps: the Kaggle image holds the rest; --ignore-installed: these exact versions win
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-deps",
               "--ignore-installed", "--quiet", *sorted(str(w) for w in wheels.glob("*.whl"))]
    subprocess.run(command, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", default=DEFAULT_INPUT, help="the competition's data folder")
    parser.add_argument("--out", default="submission.csv", help="the submission file to write")
    parser.add_argument("--work", default="segfold_work", help="folder for the test probabilities")
    parser.add_argument("--no-install", action="store_true", help="the wheels are installed already")
    args = parser.parse_args(argv)
    if not args.no_install:
        install_wheels(PACKAGE)
    import logging

    import segfold
    from segfold.package.kernel import run_kernel

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"segfold {{segfold.__version__}} from {{Path(segfold.__file__).parent}}")
    result = run_kernel(PACKAGE, args.input, args.out, args.work)
    print(f"submission: {{result['out']}} ({{result['rows']}} rows, {{result['non_empty']}} non-empty masks; "
          f"post-processing from {{result['postprocess']}}; runtime {{result['runtime']}})")


if __name__ == "__main__":
    main()
'''


def infer_py(name: str, default_input: str) -> str:
    return INFER_PY.format(name=name, default_input=default_input)


def infer_ipynb(name: str, default_input: str, dataset: str) -> str:
    """A notebook that runs the package's `infer.py` from the attached dataset (internet off)."""
    cells = [
        ("markdown", f"# segfold offline inference: {name}\n\nAttach the package folder as a dataset "
                     f"(`/kaggle/input/{dataset}`) and the competition; turn the internet off. The wheels install "
                     "with `pip install --no-index`, the test images are predicted with the packaged folds, TTA and "
                     "tuned post-processing, and `submission.csv` is written to `/kaggle/working`."),
        ("code", f"PACKAGE = '/kaggle/input/{dataset}'\nINPUT = {default_input!r}"),
        ("code", "import subprocess, sys\n"
                 "subprocess.run([sys.executable, f'{PACKAGE}/infer.py', INPUT, '--out', "
                 "'/kaggle/working/submission.csv', '--work', '/kaggle/working/segfold_work'], check=True)"),
        ("code", "import pandas as pd\npd.read_csv('/kaggle/working/submission.csv').head()"),
    ]
    notebook = {
        "cells": [{"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True),
                   **({"execution_count": None, "outputs": []} if kind == "code" else {})}
                  for kind, source in cells],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(notebook, indent=1) + "\n"


def readme(facts: dict) -> str:
    """The package's README: what is inside, how to run it, and the runtime estimate."""
    timing = "\n".join(f"| {name} | {t['seconds']:.1f} | {t['images']} | {t['per_image']:.3f} |"
                       for name, t in facts["timings"].items())
    wheels = "\n".join(f"  - `{name}`" for name in facts["wheels"])
    weights = "weights only, float16" if facts["fp16"] else "weights only"
    full = ""
    if facts.get("full"):
        share = f", weighted {facts['full_weight']} against the folds' {1 - facts['full_weight']:g}" \
            if facts.get("full_weight") is not None else ""
        full = f" and `full/{facts['full']}` (the full-data fit{share})"
    return f"""# {facts['name']}: segfold offline inference package

Built by `scripts/package.py` from `{facts['config']}`. Upload this folder as a Kaggle dataset, attach it
and the competition to a notebook with the internet off, and run `infer.ipynb` (or
`python infer.py [INPUT]`, INPUT defaulting to `{facts['default_input']}`).

- `models/`: folds {facts['folds']}{full} ({facts['arch']} / {facts['encoder']}; {weights}),
  `config.yaml` (resolved; runtime `{facts['runtime']}`), `thresholds.json`, `normalisation.json`;
  every file listed with its SHA-256 in `models/SHA256SUMS` (checked before use).
- `wheels/` (checked against `wheels/SHA256SUMS`, installed with `pip install --no-index --no-deps`):
{wheels}
- Post-processing: the tuned rules of `thresholds.json`; TTA `{facts['tta']}`.

## Runtime estimate

Measured while packaging on {facts['device']} ({facts['threads']} CPU threads): the package's own prediction
of {facts['estimate_images']} test images, model loading included (so the extrapolation errs long), the
faster of two passes per runtime.

| runtime | seconds | images | seconds per image |
| --- | --- | --- | --- |
{timing}

Chosen runtime: **{facts['runtime']}**. Extrapolated to the {facts['test_images']} test images
({facts['test_images_source']}): **about {facts['estimate_minutes']:.1f} minutes** on that machine.
A Kaggle GPU or different CPU changes this; re-measure there when the limit is close.
"""
