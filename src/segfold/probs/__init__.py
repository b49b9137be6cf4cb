"""segfold.probs: the probability layer under training, prediction, post-processing, blending and submission.

Logits to probabilities and the scoring resolution (`convert`), true masks at that resolution
(`truth`), chunked scoring (`scoring`), the uint8 probability store (`store`) and views of several
stores (`views`), writing a store batch by batch (`writer`), an experiment's fold folders
(`outputs`), checkpoints and the models in them (`checkpoint`), and the device rule (`device`).
"""

from segfold.probs.checkpoint import (
    checkpoint_model,
    load_checkpoint,
    load_checkpoint_model,
    load_fold_models,
    required_fold_checkpoints,
)
from segfold.probs.convert import DEFAULT_THRESHOLD, SCALE, binarize, probabilities, resize_probs, to_uint8
from segfold.probs.device import resolve_device
from segfold.probs.outputs import (
    AUTO_CHECKPOINT,
    FULL_DIR,
    HOLDOUT_NAME,
    OOF_NAME,
    TEST_NAME,
    checkpoint_name,
    expected_folds,
    fold_checkpoints,
    fold_dirs,
    fold_number,
    full_checkpoint,
    selected_checkpoint,
)
from segfold.probs.provenance import (
    changes,
    check_record,
    checkpoint_entry,
    config_hash,
    entry_folds,
    input_entry,
    missing_folds_note,
    new_record,
    read_record,
    rerun_for,
    source_ids,
    stale,
)
from segfold.probs.scoring import batch_scores, class_table, competition_metric, pair_dice, score_masks
from segfold.probs.store import ProbStore, store_exists, store_paths
from segfold.probs.truth import (
    PackedTruth,
    TruthFn,
    batch_truth,
    fit_mask,
    make_truth_reader,
    read_truth,
    resize_nearest,
    truth_masks,
)
from segfold.probs.views import (
    RowsView,
    StoreView,
    check_store,
    oof_store_paths,
    open_holdout,
    open_oof,
    open_test,
    tta_label,
    tta_mismatch,
)
from segfold.probs.writer import StoreWriter

__all__ = [
    "AUTO_CHECKPOINT",
    "DEFAULT_THRESHOLD",
    "FULL_DIR",
    "HOLDOUT_NAME",
    "OOF_NAME",
    "SCALE",
    "TEST_NAME",
    "PackedTruth",
    "TruthFn",
    "ProbStore",
    "RowsView",
    "StoreView",
    "StoreWriter",
    "batch_scores",
    "changes",
    "check_record",
    "check_store",
    "checkpoint_name",
    "checkpoint_entry",
    "config_hash",
    "entry_folds",
    "input_entry",
    "missing_folds_note",
    "new_record",
    "oof_store_paths",
    "read_record",
    "rerun_for",
    "source_ids",
    "stale",
    "batch_truth",
    "binarize",
    "class_table",
    "competition_metric",
    "expected_folds",
    "fit_mask",
    "fold_checkpoints",
    "fold_dirs",
    "fold_number",
    "checkpoint_model",
    "full_checkpoint",
    "load_checkpoint",
    "load_checkpoint_model",
    "load_fold_models",
    "required_fold_checkpoints",
    "make_truth_reader",
    "open_holdout",
    "open_oof",
    "open_test",
    "pair_dice",
    "probabilities",
    "read_truth",
    "resize_nearest",
    "resize_probs",
    "resolve_device",
    "score_masks",
    "selected_checkpoint",
    "store_exists",
    "store_paths",
    "to_uint8",
    "truth_masks",
    "tta_label",
    "tta_mismatch",
]
