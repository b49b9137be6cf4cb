"""Write `outputs/<exp>/submission.csv` from the test store.

Usage: `python scripts/make_submission.py --config C [--score LABELS.csv]`.

Applies the tuned post-processing (`outputs/<exp>/thresholds.json`, else the config's `postprocess`),
encodes each mask in the competition's RLE, keeps the header and row order of `sample_submission.csv`,
validates every row, then writes the file atomically. `--score` scores it against known test labels
(the score also goes to the experiment's `test_score` cell of `outputs/runs.csv`).
"""

from __future__ import annotations

import argparse

from segfold.cli import add_allow_stale, add_config_arguments, config_from_args, script_main
from segfold.runs import record_run


@script_main
def main(argv: list[str] | None = None) -> dict:
    parser = add_allow_stale(add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    parser.add_argument("--score", default=None, metavar="LABELS.csv",
                        help="labels of the test images (in the training CSV's format) to score the submission")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from segfold.submit import make_submission

    result = make_submission(cfg, labels=args.score, allow_stale=args.allow_stale)
    print(f"post-processing from {result['postprocess']}")
    print(f"submission: {result['path']} ({result['rows']} rows, {result['non_empty']} non-empty masks)")
    if "score" in result:
        print(result["table"])
        print(f"test {cfg.data.metric} = {result['score']:.5f}")
        from segfold.io import write_json_atomic

        write_json_atomic(cfg.experiment.output_dir / "submission_score.json",
                          {"labels": args.score, "metric": cfg.data.metric, "score": result["score"]})
        record_run(cfg.experiment.output_root, cfg.experiment.name, test_score=result["score"])
    return result


if __name__ == "__main__":
    main()
