"""segfold.predict: test-time prediction (TTA, tiles, fold averaging) into the `test` probability store."""

from segfold.predict.run import load_models, model_normalisation, predict_images, predict_test
from segfold.predict.tiles import needs_tiling, ramp_weights, sliding_window, tile_starts
from segfold.predict.tta import TTA_NAMES, Predictor, build_tta, make_predictor, tta_predict

__all__ = [
    "TTA_NAMES",
    "Predictor",
    "build_tta",
    "load_models",
    "make_predictor",
    "model_normalisation",
    "needs_tiling",
    "predict_images",
    "predict_test",
    "ramp_weights",
    "sliding_window",
    "tile_starts",
    "tta_predict",
]
