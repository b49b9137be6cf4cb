"""Config section `package`: what `scripts/package.py` puts into an offline Kaggle inference package."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segfold.config.base import StrictModel

# Packages a Kaggle image may lack or hold in an older version: TTA, multilabel folds, and the
# packages that build encoders and read their weights.
DEFAULT_WHEELS = ["ttach", "iterative-stratification", "timm", "safetensors"]


class PackageConfig(StrictModel):
    """The offline inference package (`scripts/package.py`).

    The package installs its wheels with `pip install --no-index`; everything else it needs
    (torch, numpy, pandas, opencv, albumentations, pydantic, ...) is taken from the Kaggle image.
    """

    wheels: list[str] = Field(list(DEFAULT_WHEELS), description="distributions whose wheels go into wheels/ "
                              "(segfold's own always does; onnxruntime too when the package runs ONNX)")
    find_links: list[str] = Field([], description="local folders of wheels searched before the registry")
    python_version: str | None = Field(None, description="Python of the Kaggle image, e.g. '3.11' (wheels are "
                                                         "chosen for it); null = this interpreter's")
    platform: str | None = Field(None, description="pip platform tag of the Kaggle image, e.g. "
                                                   "'manylinux2014_x86_64'; null = this machine's")
    fp16: bool = Field(False, description="store the weights in float16 (half the size; predictions may differ "
                                          "in the last bits)")
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="what runs the models in the kernel; auto = whichever runs the timed images faster")
    competition: str | None = Field(None, description="Kaggle competition slug: the kernel reads "
                                                      "/kaggle/input/<slug>; null = the name of data.root")
    test_images: int | None = Field(None, ge=1, description="images in the hidden test set, for the runtime "
                                                            "estimate; null = the local test images")
    estimate_images: int = Field(8, ge=1, description="test images timed for the runtime estimate")
