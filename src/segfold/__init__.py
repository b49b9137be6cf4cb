"""segfold: a Kaggle image-segmentation pipeline on timm encoders.

The model zoo keeps the segmentation_models_pytorch API::

    model = segfold.create_model("UnetPlusPlus", encoder_name="efficientnet-b0", encoder_weights=None, classes=4)
    masks = model.predict(images)
"""

__version__ = "0.1.0"  # NOTE first: segfold.models.base reads it while this package is still importing

from segfold.encoders import get_encoder, get_preprocessing_params, list_encoders  # noqa: E402
from segfold.models import (  # noqa: E402
    ModelOutputs,
    SegmentationModel,
    build_model,
    create_model,
    from_pretrained,
    list_models,
    register_model,
    unpack_outputs,
)
from segfold.models.decoders.deeplab import DeepLabV3, DeepLabV3Plus  # noqa: E402
from segfold.models.decoders.dpt import DPT  # noqa: E402
from segfold.models.decoders.fpn import FPN  # noqa: E402
from segfold.models.decoders.linknet import Linknet  # noqa: E402
from segfold.models.decoders.manet import MAnet  # noqa: E402
from segfold.models.decoders.pan import PAN  # noqa: E402
from segfold.models.decoders.pspnet import PSPNet  # noqa: E402
from segfold.models.decoders.segformer import Segformer  # noqa: E402
from segfold.models.decoders.unet import Unet  # noqa: E402
from segfold.models.decoders.unetplusplus import UnetPlusPlus  # noqa: E402
from segfold.models.decoders.upernet import UPerNet  # noqa: E402

__all__ = [
    "DPT", "FPN", "MAnet", "PAN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "ModelOutputs",
    "Segformer", "SegmentationModel", "UPerNet", "Unet", "UnetPlusPlus", "__version__", "build_model",
    "create_model", "from_pretrained", "get_encoder", "get_preprocessing_params", "list_encoders", "list_models",
    "register_model", "unpack_outputs",
]
