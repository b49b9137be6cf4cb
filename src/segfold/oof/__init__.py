"""segfold.oof: the OOF stage: the folds' stores gathered and scored (`gather`), best and worst images drawn
(`visualize`)."""

from segfold.oof.gather import SCORES_FILE, expected_folds, fold_report, gather_oof, score_store
from segfold.oof.visualize import visualize_oof

__all__ = ["SCORES_FILE", "expected_folds", "fold_report", "gather_oof", "score_store", "visualize_oof"]
