"""segfold: a Kaggle image-segmentation pipeline on timm encoders.

The model zoo keeps the segmentation_models_pytorch API::

    model = segfold.create_model("UnetPlusPlus", encoder_name="efficientnet-b0", encoder_weights=None, classes=4)
    masks = model.predict(images)
"""

__version__ = "0.1.0"
