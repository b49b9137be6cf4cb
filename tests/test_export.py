"""ONNX / TorchScript export: every architecture on a tiny encoder, the parity check, fixed-size pooling,
fold exports next to their checkpoints and the stale-export check."""

from __future__ import annotations

import runpy

import pytest
import torch
from torch import nn

from segfold.config import load_config
from segfold.config.load import save_config
from segfold.errors import ExportError, WeightsError
from segfold.export import export_folds, export_model, load_exported, load_exported_folds, plan_export
from segfold.export.pooling import FixedAveragePool, fixed_pyramid_pooling, pooling_matrix
from segfold.models import create_model, list_models, unpack_outputs
from segfold.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.export

FIXED_SIZE = {"PSPNet", "UPerNet"}  # pyramid pooling: height and width fixed (see segfold.export.plan)
SLOW = {"DPT"}  # the largest graph (ViT blocks and reassembly): the slowest export


def build(arch: str, **kwargs) -> nn.Module:
    encoder = "test_vit" if arch == "DPT" else "test_resnet"
    return create_model(arch, encoder_name=encoder, encoder_weights=None, **kwargs).eval()


def archs(slow: set[str]):
    return [pytest.param(a, marks=pytest.mark.slow) if a in slow else a for a in list_models()]


@pytest.mark.parametrize("arch", archs(SLOW))
def test_onnx_export_of_every_architecture_matches_pytorch(arch, tmp_path):
    model = build(arch, classes=2, aux_params={"classes": 2})
    meta = export_model(model, tmp_path / "model.onnx", "onnx", (40, 60))
    divisor = model.required_divisor
    assert meta.export_size == [-(-40 // divisor) * divisor, -(-60 // divisor) * divisor]
    assert meta.dynamic_size == (arch not in FIXED_SIZE)
    assert meta.outputs == ["masks", "labels"]
    assert len(meta.parity) == 2 and all(entry["max_abs_diff"] < 1e-3 for entry in meta.parity)
    assert model.pad_input, "export leaves the model as it was"
    runtime = load_exported(tmp_path / "model.onnx")
    assert runtime.pretrained_cfg == model.pretrained_cfg and runtime.config["in_channels"] == 3
    # the runtime pads like the PyTorch model: a size that is no multiple of the divisor, cropped back
    height, width = (40, 60) if arch in FIXED_SIZE else (divisor + 3, 2 * divisor + 5)
    x = torch.randn(3, 3, height, width)
    with torch.no_grad():
        expected, got = unpack_outputs(model(x)), unpack_outputs(runtime(x))
    assert got.masks.shape == (3, 2, height, width)
    torch.testing.assert_close(got.masks, expected.masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.labels, expected.labels, atol=1e-4, rtol=1e-4)
    if arch in FIXED_SIZE:
        assert meta.reasons and "fixed" in meta.reasons[0]
        with pytest.raises(ValueError, match="takes .* inputs only"):
            runtime(torch.randn(1, 3, 2 * height, width))


@pytest.mark.parametrize("arch", ["Unet", "PSPNet"])
def test_torchscript_export_is_dynamic_for_every_size(arch, tmp_path):
    model = build(arch, classes=3)
    meta = export_model(model, tmp_path / "model.torchscript.pt", "torchscript", (32, 32))
    assert meta.dynamic_size and meta.exporter == "jit-trace" and meta.outputs == ["masks"]
    runtime = load_exported(tmp_path / "model.torchscript.pt")
    x = torch.randn(2, 3, 3 * model.required_divisor, 5 * model.required_divisor)
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), model(x), atol=1e-5, rtol=1e-5)


def test_plans_name_what_is_fixed_and_why():
    assert plan_export(build("Unet"), "onnx").dynamic_size
    assert plan_export(build("DeepLabV3"), "onnx").reasons == ()  # global pooling only
    pspnet = plan_export(build("PSPNet"), "onnx")
    assert not pspnet.dynamic_size and "(1x1, 2x2, 3x3, 6x6)" not in pspnet.reasons[0]
    assert "2x2, 3x3, 6x6" in pspnet.reasons[0]
    dpt = plan_export(build("DPT"), "onnx")  # position-embedding resampling: see segfold.export.symbolics
    assert dpt.dynamic_size and dpt.exporter == "torchscript-onnx" and dpt.reasons == ()
    with pytest.raises(ValueError, match="use one of onnx, torchscript"):
        plan_export(build("Unet"), "tflite")


def test_pooling_matrix_by_hand_and_fixed_pool_equals_adaptive_pool():
    # 5 rows into 2 bins: rows 0-2 and 2-4 (PyTorch's floor / ceil windows overlap at row 2)
    third = 1 / 3
    expected = torch.tensor([[third, third, third, 0, 0], [0, 0, third, third, third]])
    torch.testing.assert_close(pooling_matrix(5, 2), expected)
    x = torch.randn(2, 4, 7, 11)
    for bins in [(2, 2), (3, 3), (6, 6), (3, 5)]:
        torch.testing.assert_close(FixedAveragePool((7, 11), bins)(x), nn.AdaptiveAvgPool2d(bins)(x))


def test_fixed_pyramid_pooling_swaps_and_restores():
    model = build("PSPNet")
    before = [type(m) for m in model.modules()]
    with fixed_pyramid_pooling(model, torch.randn(1, 3, 32, 48)) as swapped:
        assert swapped == 3  # bins 2, 3, 6 (1 is global pooling and stays)
        assert sum(isinstance(m, FixedAveragePool) for m in model.modules()) == 3
    assert [type(m) for m in model.modules()] == before


class BatchDependent(nn.Module):
    """Identity for a batch of 2, times 5 otherwise: a trace at batch 2 cannot know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[0] == 2 else 5 * x


def test_parity_check_refuses_an_export_that_computes_something_else(tmp_path):
    model = build("Unet", classes=1)
    model.segmentation_head.append(BatchDependent())
    with pytest.raises(ExportError, match="differs from PyTorch by .* 1x3x32x32 input"):
        export_model(model, tmp_path / "model.onnx", "onnx", (32, 32))
    assert not list(tmp_path.iterdir()), "nothing is left behind"


@pytest.fixture
def fold_experiment(tmp_path):
    cfg = load_config(None, [f"experiment.output_root={tmp_path}", "experiment.name=exp", "model.arch=Unet",
                             "model.encoder_name=test_resnet", "model.encoder_weights=null",
                             "model.params={decoder_channels: [16, 16, 8, 8, 8]}", "data.image_size=[40, 72]"])
    torch.manual_seed(3)
    model = create_model("Unet", encoder_name="test_resnet", encoder_weights=None, classes=len(cfg.data.classes),
                         decoder_channels=[16, 16, 8, 8, 8])
    save_checkpoint(cfg.experiment.output_dir / "fold1" / "best.pt",
                    {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1})
    return cfg, model.eval()


def test_export_script_writes_next_to_the_checkpoint_and_prints_parity(fold_experiment, repo_root, capsys):
    cfg, model = fold_experiment
    config = cfg.experiment.output_dir / "config.yaml"
    save_config(cfg, config)
    main = runpy.run_path(str(repo_root / "scripts" / "export.py"), run_name="export_script")["main"]
    main(["--config", str(config), "--format", "onnx"])
    out = capsys.readouterr().out
    path = cfg.experiment.output_dir / "fold1" / "best.onnx"
    assert f"fold 1: Unet -> {path}" in out and "dynamic: batch, height, width" in out
    assert "parity 1x3x64x96: max abs diff" in out and "parity 2x3x96x160: max abs diff" in out
    models, folds = load_exported_folds(cfg, "onnx", None, torch.device("cpu"))
    assert folds == [1]
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(models[0](x), model(x), atol=1e-4, rtol=1e-4)


def test_a_stale_or_missing_export_is_refused(fold_experiment):
    cfg, model = fold_experiment
    with pytest.raises(WeightsError, match="no best.onnx next to .* export it first"):
        load_exported_folds(cfg, "onnx", None, torch.device("cpu"))
    export_folds(cfg, "onnx")
    checkpoint = cfg.experiment.output_dir / "fold1" / "best.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 2})
    with pytest.raises(WeightsError, match="exported from an earlier best.pt .* re-export it"):
        load_exported_folds(cfg, "onnx", [1], torch.device("cpu"))
