"""segfold.submit: the submission CSV from the test store and the tuned rules, validated against the sample."""

from segfold.submit.submission import (
    Layout,
    build_submission,
    detect_layout,
    make_submission,
    read_csv_strings,
    score_submission,
    validate_submission,
    write_submission,
)

__all__ = [
    "Layout",
    "build_submission",
    "detect_layout",
    "make_submission",
    "read_csv_strings",
    "score_submission",
    "validate_submission",
    "write_submission",
]
