"""The segmentation model base class: encoder -> decoder -> mask head (+ image-level head).

Everything that is the same for every architecture lives here, once: building the encoder, the
heads and their initialisation, padding the input to the size the network needs, ``predict``,
freezing the encoder, and saving / loading. An architecture only builds its decoder.

How an architecture is written (copy this pattern)::

    from segfold.models.base import SegmentationModel
    from segfold.models.registry import register_model

    class MyDecoder(nn.Module):
        # forward(features) gets the encoder's list of depth+1 NCHW tensors (index 0 is the input,
        # stride 1) and returns one NCHW tensor with `out_channels` channels.
        ...

    @register_model
    class MyNet(SegmentationModel):
        \"\"\"One paragraph on the architecture, with the paper link.

        Example:
            >>> model = segfold.create_model("MyNet", encoder_name="resnet34", classes=3)
            >>> masks = model.predict(images)  # (N, 3, H, W)
        \"\"\"

        def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                     encoder_weights: str | None = "imagenet", decoder_channels: int = 256,
                     in_channels: int = 3, classes: int = 1, activation: ActivationSpec = None,
                     upsampling: int = 4, aux_params: dict | None = None, **kwargs: Any) -> None:
            super().__init__()
            encoder = self.create_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth,
                                          weights=encoder_weights, output_stride=32, **kwargs)
            decoder = MyDecoder(encoder.out_channels, decoder_channels)
            self.assemble(encoder, decoder, decoder_channels, classes=classes, activation=activation,
                          aux_params=aux_params, head_kernel_size=1, head_upsampling=upsampling)

``assemble`` sets ``self.encoder``, ``self.decoder``, ``self.segmentation_head`` and
``self.classification_head`` (None without ``aux_params``), initialises the decoder (kaiming) and the
heads (xavier), and sets ``self.required_divisor`` (default: the encoder's largest reduction; pass
``divisor=`` when the decoder needs more). The constructor's keywords are recorded automatically
(``model.config``) for ``save_pretrained``; keep them JSON-friendly.

Padding: with ``model.pad_input = True`` (the default) ``forward`` pads the bottom and right edges up
to a multiple of ``required_divisor`` (``pad_mode``: "reflect" by default, "replicate" where the image
is too small to reflect, or "constant" for zeros) and crops the outputs back, so masks always have
the input's size. With ``pad_input = False`` (for export) a size that does not fit is a ValueError
that names the size to pad to.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from segfold import __version__
from segfold.encoders import get_encoder, get_preprocessing_params, resolve_encoder_name
from segfold.errors import ConfigError, WeightsError
from segfold.io import atomic_path, write_json_atomic
from segfold.models.heads import ActivationSpec, ClassificationHead, SegmentationHead
from segfold.models.registry import get_model_class

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PAD_MODES = ("reflect", "replicate", "constant")


def _record_init(init: Any) -> Any:
    """Wrap an architecture's ``__init__`` so the outermost call records its bound keywords."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: SegmentationModel, *args: Any, **kwargs: Any) -> None:
        if "_init_config" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    config.update(value)
                elif signature.parameters[name].kind is not inspect.Parameter.VAR_POSITIONAL:
                    config[name] = value
            # NOTE set through object.__setattr__: nn.Module.__init__ has not run yet.
            object.__setattr__(self, "_init_config", {"arch": type(self).__name__, **config})
        init(self, *args, **kwargs)

    return wrapper


class SegmentationModel(nn.Module):
    """Base of every architecture; see the module docstring for how a subclass is written."""

    pad_input: bool = True
    pad_mode: str = "reflect"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_init(cls.__dict__["__init__"])  # type: ignore[method-assign]

    # ----------------------------------------------------------------------------------- building

    def create_encoder(self, name: str, in_channels: int = 3, depth: int = 5, weights: str | None = None,
                       output_stride: int = 32, **kwargs: Any) -> nn.Module:
        """Build the encoder with :func:`segfold.encoders.get_encoder` and remember its name and weights.

        Extra keywords go to ``get_encoder`` when it takes them; otherwise they are an error that
        names them.
        """
        if kwargs:
            takes_extra = any(p.kind is inspect.Parameter.VAR_KEYWORD
                              for p in inspect.signature(get_encoder).parameters.values())
            if not takes_extra:
                own = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "kwargs")]
                raise ValueError(f"{type(self).__name__} got unknown keyword(s) {sorted(kwargs)}; "
                                 f"valid keywords: {', '.join(own)}")
        if not isinstance(depth, int) or not 1 <= depth <= 5:
            raise ValueError(f"encoder_depth={depth!r} is not supported; use an integer from 1 to 5")
        encoder = get_encoder(name, in_channels=in_channels, depth=depth, weights=weights,
                              output_stride=output_stride, **kwargs)
        self.encoder_name = name
        self.encoder_weights = weights
        return encoder

    def assemble(self, encoder: nn.Module, decoder: nn.Module, decoder_out_channels: int, *, classes: int,
                 activation: ActivationSpec = None, aux_params: dict[str, Any] | None = None,
                 head_kernel_size: int = 3, head_upsampling: int = 1, deep_channels: list[int] | None = None,
                 divisor: int | None = None) -> None:
        """Attach encoder, decoder and heads, and initialise decoder and heads.

        Args:
            encoder: from :meth:`create_encoder`.
            decoder: maps the encoder's feature list to one tensor (or, for deep supervision in
                training mode, to ``(tensor, [extra tensors])``).
            decoder_out_channels: channels of the decoder's output (input of the mask head).
            classes: channels of the output masks.
            activation: activation of the mask head (see ``heads.get_activation``).
            aux_params: image-level head on the deepest feature (``classes``, ``pooling``,
                ``dropout``, ``activation``), or None for none.
            head_kernel_size: kernel of the mask head's convolution.
            head_upsampling: scale factor from the decoder output to the input size.
            deep_channels: channels of the decoder's extra outputs; each gets its own 1x1 head.
            divisor: input sizes must be multiples of this (default: the encoder's largest reduction).
        """
        if not isinstance(classes, int) or classes < 1:
            raise ValueError(f"classes={classes!r}: use a positive integer")
        self.encoder = encoder
        self.decoder = decoder
        # the timm model actually built (efficientnet_pytorch-layout weights build the `tf_` twin) and the
        # input normalisation of the weights actually loaded (`get_encoder` records both)
        self.encoder_timm_name = getattr(encoder, "name", None)
        self.preprocessing = dict(encoder.preprocessing) if hasattr(encoder, "preprocessing") else None
        self.segmentation_head = SegmentationHead(decoder_out_channels, classes, kernel_size=head_kernel_size,
                                                  upsampling=head_upsampling, activation=activation)
        self.classification_head = (ClassificationHead.from_params(encoder.out_channels[-1], aux_params)
                                    if aux_params is not None else None)
        self.deep_heads = (nn.ModuleList(nn.Conv2d(channels, classes, 1) for channels in deep_channels)
                           if deep_channels else None)
        self.required_divisor = int(divisor if divisor is not None else max(encoder.reductions))
        self._encoder_frozen = False
        initialize_decoder(self.decoder)
        for head in (self.segmentation_head, self.classification_head, self.deep_heads):
            if head is not None:
                initialize_head(head)

    # ------------------------------------------------------------------------------------ forward

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size at or above (height, width) that this model takes without padding."""
        d = self.required_divisor
        return (height + d - 1) // d * d, (width + d - 1) // d * d

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        target_h, target_w = self.padded_size(height, width)
        if (target_h, target_w) == (height, width):
            return x
        if not self.pad_input:
            raise ValueError(f"Wrong input shape height={height}, width={width}: {type(self).__name__} needs sizes "
                             f"divisible by {self.required_divisor} (model.pad_input is False); consider padding "
                             f"to ({target_h}, {target_w})")
        return pad_to_divisor(x, self.required_divisor, self.pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[Any, ...]:
        """Masks (N, classes, H, W); with ``aux_params`` ``(masks, labels)``; deep supervision in
        training adds the list of extra mask logits last (read outputs with ``unpack_outputs``)."""
        height, width = x.shape[-2:]
        x = self._pad(x)
        features = self.encoder(x)
        decoded = self.decoder(features)
        extra: list[torch.Tensor] = []
        if isinstance(decoded, (tuple, list)):
            decoded, extra = decoded
        masks = self.segmentation_head(decoded)
        assert masks.shape[-2:] == x.shape[-2:], f"mask size {tuple(masks.shape[-2:])} != input {tuple(x.shape[-2:])}"
        outputs: list[Any] = [masks[..., :height, :width]]
        if self.classification_head is not None:
            outputs.append(self.classification_head(features[-1]))
        if self.deep_heads is not None and extra:
            outputs.append([F.interpolate(head(feature), size=x.shape[-2:], mode="bilinear",
                                          align_corners=False)[..., :height, :width]
                            for head, feature in zip(self.deep_heads, extra, strict=True)])
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor | tuple[Any, ...]:
        """Switch to eval mode (the model stays in it) and run ``forward`` under ``torch.inference_mode``."""
        if self.training:
            self.eval()
        return self.forward(x)

    # ----------------------------------------------------------------------------- encoder freeze

    def freeze_encoder(self) -> None:
        """Stop training the encoder: no gradients, and the running statistics of every normalisation layer
        that keeps them (BatchNorm, SyncBatchNorm, InstanceNorm with ``track_running_stats``: torch's
        ``_NormBase``) stay fixed in ``train()``."""
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self._encoder_frozen = True
        self._fix_encoder_norms()

    def unfreeze_encoder(self) -> None:
        """Undo :meth:`freeze_encoder`."""
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(True)
        self._encoder_frozen = False
        self.encoder.train(self.training)

    def _fix_encoder_norms(self) -> None:
        for module in self.encoder.modules():
            if isinstance(module, _NormBase):
                module.eval()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's activations in the backward pass instead of keeping them (timm's
        ``set_grad_checkpointing``): less memory for large inputs, about a third more compute.

        Raises:
            ValueError: the encoder is not a timm model that supports it (e.g. the MiT encoders).
        """
        timm_model = getattr(self.encoder, "model", None)
        setter = getattr(timm_model, "set_grad_checkpointing", None)
        if setter is None:
            raise ValueError(f"encoder {self.encoder_name!r} does not support gradient checkpointing (no timm "
                             "set_grad_checkpointing); set model.grad_checkpointing: false")
        setter(enable)
        self.grad_checkpointing = enable

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if getattr(self, "_encoder_frozen", False):
            self._fix_encoder_norms()
        return self

    # ------------------------------------------------------------------------------ save and load

    @property
    def config(self) -> dict[str, Any]:
        """``arch`` plus the constructor's keywords, as given (defaults filled in)."""
        return dict(self._init_config)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """Normalisation of the encoder's weights: ``{"mean", "std", "input_range"}`` for the data layer.

        The values recorded when the weights were loaded (or restored from a checkpoint / saved model
        into ``model.preprocessing``); models without a record fall back to the encoder name's defaults.
        """
        if getattr(self, "preprocessing", None):
            return dict(self.preprocessing)
        return get_preprocessing_params(self.encoder_name, self.encoder_weights)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (arch, keywords, segfold version) and ``model.safetensors`` into ``directory``.

        Returns:
            The directory.
        """
        directory = Path(directory)
        config = _jsonable(self.config)
        payload = {"arch": config.pop("arch"), "segfold_version": __version__, "kwargs": config,
                   "encoder_timm_name": getattr(self, "encoder_timm_name", None), "preprocessing": self.pretrained_cfg}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_model(self, str(tmp), metadata={"format": "pt", "arch": payload["arch"]})
        write_json_atomic(directory / CONFIG_NAME, payload)
        return directory


def pad_to_divisor(x: torch.Tensor, divisor: int, mode: str = "reflect") -> torch.Tensor:
    """``x`` padded at the bottom and right up to multiples of ``divisor`` (what ``forward`` does with ``pad_input``).

    ``mode`` is one of ``PAD_MODES``; "reflect" falls back to "replicate" where the image is too small
    to reflect. Exported models (``segfold.export``) take no padding inside; their runtime pads with this.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad_mode={mode!r}: use one of {', '.join(PAD_MODES)}")
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % divisor, -width % divisor
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        mode = "replicate"  # NOTE reflect padding must be smaller than the image
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    """The config with tuples as lists; a value JSON cannot hold is an error naming its key."""
    out = {}
    for key, value in config.items():
        try:
            out[key] = json.loads(json.dumps(value))
        except TypeError as error:
            raise ValueError(f"cannot save model keyword {key}={value!r} to JSON; pass it as a name or a number "
                             f"(for activations, a name like 'sigmoid')") from error
    return out


def from_pretrained(directory: str | os.PathLike, **overrides: Any) -> SegmentationModel:
    """Load a model written by :meth:`SegmentationModel.save_pretrained`.

    The model is built with ``encoder_weights=None`` (the saved weights replace them), but keeps the
    original weights name for its preprocessing parameters.

    Args:
        directory: folder with ``config.json`` and ``model.safetensors``.
        **overrides: constructor keywords to change (e.g. ``activation="sigmoid"``).
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise WeightsError(f"{path}: no such file; a saved model folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                               f"(written by model.save_pretrained)")
    try:
        payload = json.loads(config_path.read_text())
        arch, kwargs = payload["arch"], dict(payload["kwargs"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise WeightsError(f"{config_path}: not a segfold model config ({error}); expected keys 'arch' and "
                           f"'kwargs'") from error
    try:
        cls = get_model_class(arch)
    except ValueError as error:
        raise ConfigError(f"{config_path}: {error}") from error
    encoder_weights = kwargs.get("encoder_weights")
    built = payload.get("encoder_timm_name")
    if built and "encoder_name" not in overrides and "encoder_name" in kwargs:
        if resolve_encoder_name(kwargs["encoder_name"]) != built:
            # NOTE e.g. efficientnet-b0 with efficientnet_pytorch weights was built as tf_efficientnet_b0 (TF
            # padding); without its weights the name alone would build the symmetric-padding efficientnet_b0
            kwargs["encoder_name"] = built
    kwargs.update(overrides)
    kwargs["encoder_weights"] = None
    model = cls(**kwargs)
    try:
        load_model(model, str(weights_path), strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{weights_path}: does not match the model in {config_path.name}: {error}") from error
    model.encoder_weights = encoder_weights
    model.preprocessing = dict(payload["preprocessing"]) if payload.get("preprocessing") else None
    return model


def initialize_decoder(module: nn.Module) -> None:
    """Decoder init: convs kaiming-uniform (fan_in, relu) with zero bias; norms weight 1 bias 0; linears xavier."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def initialize_head(module: nn.Module) -> None:
    """Head init: convs and linears xavier-uniform with zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
