"""The whole chain of one experiment: folds -> train all folds -> OOF -> thresholds -> TTA predict -> submission.

`make demo` runs it on the synthetic demo competition; `python scripts/run_chain.py --config configs/camvid4.yaml`
on CamVid-4. Each stage is its own script (run here one after another with the same `--config` / `--set`), so a
chain that stopped can be continued stage by stage: `--from-stage tune_thresholds`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from segfold.cli import add_config_arguments, config_from_args, script_main

SCRIPTS = Path(__file__).resolve().parent
STAGES = ["make_folds", "train", "oof", "tune_thresholds", "predict", "make_submission"]


def stage_command(stage: str, args: argparse.Namespace, labels: Path | None) -> list[str]:
    command = [sys.executable, str(SCRIPTS / f"{stage}.py")]
    if args.config:
        command += ["--config", args.config]
    overrides = list(args.overrides or []) + ([f"infer.tta={args.tta}"] if args.tta else [])
    if overrides:  # --tta is infer.tta for every stage: the OOF (with infer.oof_tta) and the test get the same
        command += ["--set", *overrides]
    if stage == "train":
        command += ["--fold", "all"] + [f"--{flag}" for flag in ("resume", "overwrite") if getattr(args, flag)]
    if stage == "make_submission" and labels is not None:
        command += ["--score", str(labels)]
    return command


@script_main
def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--from-stage", choices=STAGES, default=STAGES[0], help="skip the stages before this one")
    parser.add_argument("--resume", action="store_true", help="train: continue every fold from its last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="train: start every fold again (old runs move to <experiment>/replaced/)")
    parser.add_argument("--tta", choices=["none", "hflip", "vflip", "flips", "d4"], default=None,
                        help="override infer.tta (the test's TTA, and the OOF's with infer.oof_tta)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    out = cfg.experiment.output_dir

    from segfold.data.demo import ensure_demo_data

    ensure_demo_data(cfg.data)
    labels = cfg.data.root_path / cfg.data.test_labels if cfg.data.test_labels else None
    labels = labels if labels is not None and labels.is_file() else None

    started = time.time()
    for stage in STAGES[STAGES.index(args.from_stage):]:
        command = stage_command(stage, args, labels)
        print(f"\n=== {stage}: {' '.join(command[1:])}", flush=True)
        t0 = time.time()
        result = subprocess.run(command)
        if result.returncode != 0:
            print(f"error: stage '{stage}' failed (exit {result.returncode}); fix it and rerun with "
                  f"--from-stage {stage}", file=sys.stderr)
            raise SystemExit(result.returncode)
        print(f"=== {stage} done in {time.time() - t0:.0f}s", flush=True)

    print(f"\n=== chain done in {(time.time() - started) / 60:.1f} min; outputs in {out}/")
    summary = out / "thresholds.json"
    if summary.is_file():
        tuned = json.loads(summary.read_text())
        print(f"OOF score before tuning: {tuned.get('score_before')}, after tuning: {tuned.get('score_after')}")
    score_file = out / "submission_score.json"
    if score_file.is_file():
        print(f"test score of submission.csv: {json.loads(score_file.read_text()).get('score')}")


if __name__ == "__main__":
    main()
