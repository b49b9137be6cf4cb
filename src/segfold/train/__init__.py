"""segfold.train: the training loop, its optimizers, schedules, checkpoints and run records.

`train(cfg, fold)` trains one fold and `train_folds(cfg, folds)` several; a trained model is
rebuilt for inference by `segfold.probs.load_checkpoint_model(path, device)`.
"""

from segfold.probs import load_checkpoint, load_checkpoint_model  # where they lived before segfold.probs
from segfold.train.loop import train, train_folds

__all__ = ["load_checkpoint", "load_checkpoint_model", "train", "train_folds"]
