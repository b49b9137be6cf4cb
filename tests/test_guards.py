"""No silent overwrite, no silent bad data, one-line errors: one test per case of issue 13.

Each test asserts the message and that nothing the user had was lost.
"""

from __future__ import annotations

import hashlib
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from segfold.config.load import deep_merge, validate_config
from segfold.data.images import DataWarning
from segfold.errors import ConfigError, DataError, OutputError, TrainingError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_script(monkeypatch, capsys):
    """Run `scripts/<name>.py args...` in this process (as its `__main__` would); returns (exit code, stderr)."""

    def run(name: str, *args: str) -> tuple[int, str]:
        monkeypatch.delenv("SEGFOLD_DEBUG", raising=False)
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
        module = runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name="segfold_script")
        capsys.readouterr()
        try:
            module["main"]()
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    return run


def one_line_error(done: tuple[int, str]) -> str:
    """The single `error: ...` line a script printed before exiting with 1."""
    code, stderr = done
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """8 generated demo images (128 x 256, four classes) and 2 test images."""
    from segfold.data.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("data") / "demo", seed=1, n_train=8, n_test=2)


def copy_data(root: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root, to))


def tiny_config(data_root: Path, out: Path, **sections):
    base = {
        "experiment": {"name": "tiny", "output_root": str(out), "seed": 3},
        "data": {"root": str(data_root), "image_size": [32, 64], "metric_size": [32, 64], "folds": {"n_folds": 2}},
        "model": {"arch": "Unet", "encoder_name": "test_resnet", "encoder_weights": None,
                  "params": {"decoder_channels": [16, 16, 8, 8, 8]}},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "write_oof": False},
    }
    return validate_config(deep_merge(base, sections))


# ------------------------------------------------------------------------------- no silent overwrite


def test_train_refuses_a_trained_fold_and_overwrite_moves_the_old_run_aside(demo_root, tmp_path, run_script):
    import yaml

    from segfold.config.load import config_to_dict
    from segfold.probs import read_record
    from segfold.train import train

    cfg = tiny_config(demo_root, tmp_path, train={"write_oof": True})
    train(cfg, 0)
    fold_dir = tmp_path / "tiny" / "fold0"
    # the fold's OOF records the checkpoint it was written from (provenance)
    record = read_record(fold_dir / "oof.json")
    (checkpoint,) = record["checkpoints"]
    assert (record["stage"], record["folds"], checkpoint["epoch"]) == ("train", [0], 1)
    assert checkpoint["path"] == str((fold_dir / "best.pt").resolve())
    assert checkpoint["mtime_ns"] == (fold_dir / "best.pt").stat().st_mtime_ns
    before = {name: digest(fold_dir / name) for name in ("best.pt", "last.pt", "metrics.csv")}
    events = sorted(p.name for p in (fold_dir / "tensorboard").iterdir())
    assert events

    # the library refuses, naming both ways out
    with pytest.raises(TrainingError, match=r"already holds a run of fold 0 \(best.pt of epoch 1, score .*--resume.*"
                                            r"--overwrite"):
        train(cfg, 0)
    # the script too, as one line, before it builds anything
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    line = one_line_error(run_script("train", "--config", str(config_file), "--fold", "0"))
    assert "--resume" in line and "--overwrite" in line and str(fold_dir) in line
    assert {name: digest(fold_dir / name) for name in before} == before
    assert sorted(p.name for p in (fold_dir / "tensorboard").iterdir()) == events

    with pytest.raises(ConfigError, match="not both"):
        train(cfg, 0, resume=True, overwrite=True)

    # --overwrite: the old run moves to replaced/ untouched, the new one starts in an empty folder
    train(cfg.model_copy(update={"experiment": cfg.experiment.model_copy(update={"seed": 4})}), 0, overwrite=True)
    (aside,) = (tmp_path / "tiny" / "replaced").iterdir()
    assert aside.name.startswith("fold0-")
    assert {name: digest(aside / name) for name in before} == before
    assert sorted(p.name for p in (aside / "tensorboard").iterdir()) == events
    assert (fold_dir / "best.pt").is_file() and digest(fold_dir / "best.pt") != before["best.pt"]
    assert all(p.name not in events for p in (fold_dir / "tensorboard").iterdir())


def test_resume_without_last_checkpoint_refuses_instead_of_starting_over(tmp_path):
    from segfold.train.rundir import check_fold_dir

    fold_dir = tmp_path / "fold2"
    fold_dir.mkdir()
    (fold_dir / "best.pt").write_bytes(b"weights")
    with pytest.raises(TrainingError, match=r"has best.pt but no last.pt to resume from; start again with --overwrite"):
        check_fold_dir(fold_dir, 2, resume=True, overwrite=False)
    assert (fold_dir / "best.pt").read_bytes() == b"weights"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_interrupted_writes_are_cleaned_on_the_next_run(tmp_path):
    from segfold.io import LEGACY_GRACE_SECONDS, write_text_atomic
    from segfold.train.rundir import prepare_fold_dir

    fold_dir = tmp_path / "fold0"
    fold_dir.mkdir()
    dead, alive = _dead_pid(), os.getppid()
    stale = [fold_dir / f".best.pt.{dead}.k2x9q0ab.pt", fold_dir / f".metrics.csv.{dead}.abcdefgh.csv",
             fold_dir / ".last.pt.zz_09abc.pt"]  # the last: the name older versions wrote (no pid)
    for path in stale:
        path.write_bytes(b"")
    old = time.time() - LEGACY_GRACE_SECONDS - 5
    os.utime(stale[2], (old, old))
    running = fold_dir / f".last.pt.{alive}.qqqqqqqq.pt"  # a writer that still runs
    fresh_legacy = fold_dir / ".config.yaml.abcdefgh.yaml"  # too recent to tell
    keep = {fold_dir / ".gitignore": b"*\n", fold_dir / "best.pt": b"weights", running: b"", fresh_legacy: b""}
    for path, data in keep.items():
        path.write_bytes(data)

    # the next atomic write of a file removes that file's leftovers ...
    write_text_atomic(fold_dir / "metrics.csv", "epoch\n")
    assert not stale[1].exists() and stale[0].exists()
    # ... and the next run of the fold removes all of them
    assert prepare_fold_dir(fold_dir, overwrite=False) is None
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == data for path, data in keep.items())


# ---------------------------------------------------------------------------------- bad data


def test_header_only_train_csv_is_an_error(demo_root, tmp_path, run_script):
    from segfold.data.formats import read_train

    root = copy_data(demo_root, tmp_path / "demo")
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    cfg = tiny_config(root, tmp_path / "out")
    with pytest.raises(DataError, match=r"train.csv: none of the 8 training images has a labelled pixel of any class "
                                        r"\['1', '2', '3', '4'\].*header-only"):
        read_train(cfg.data)
    line = one_line_error(run_script("make_folds", "--set", f"data.root={root}", f"experiment.output_root={tmp_path}"))
    assert "none of the 8 training images" in line
    assert not (tmp_path / "demo" / "folds.csv").exists()


def test_a_class_without_positives_is_a_warning_naming_it(demo_root, tmp_path):
    from segfold.data.formats import read_train

    root = copy_data(demo_root, tmp_path / "demo")
    frame = pd.read_csv(root / "train.csv", dtype=str)
    frame[frame["ClassId"] != "3"].to_csv(root / "train.csv", index=False)
    cfg = tiny_config(root, tmp_path / "out")
    with pytest.warns(DataWarning, match=r"class\(es\) \['3'\] have no labelled pixel in any of the 8 training"):
        annotations = read_train(cfg.data)
    assert (annotations.areas[:, 2] == 0).all() and annotations.areas[:, [0, 1, 3]].sum() > 0


def test_truncated_images_are_named_when_the_labels_are_read(demo_root, tmp_path):
    from segfold.data.formats import read_test_ids, read_train

    root = copy_data(demo_root, tmp_path / "demo")
    cfg = tiny_config(root, tmp_path / "out")
    train_ids = read_train(cfg.data).image_ids
    for folder, image_id in (("train_images", train_ids[3]), ("test_images", "test_0001.jpg")):
        data = (root / folder / image_id).read_bytes()
        (root / folder / image_id).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"1 image file\(s\) in {root / 'train_images'} are truncated .*: "
                                        rf"{train_ids[3]} \(re-download"):
        read_train(cfg.data)
    with pytest.raises(DataError, match=r"1 image file\(s\) in .*test_images are truncated .*: test_0001.jpg"):
        read_test_ids(cfg.data)


def test_an_image_of_another_size_is_named_when_its_rle_still_fits(demo_root, tmp_path):
    from segfold.data.formats import read_train

    root = copy_data(demo_root, tmp_path / "demo")
    frame = pd.read_csv(root / "train.csv", dtype=str)
    image_id = frame["ImageId"].iloc[0]
    image = cv2.imread(str(root / "train_images" / image_id))
    cv2.imwrite(str(root / "train_images" / image_id), cv2.resize(image, (512, 256)))  # RLE ends within it
    cfg = tiny_config(root, tmp_path / "out")
    with pytest.warns(DataWarning, match=rf"1 image\(s\) in .* differ in size from the other 7 \(128x256\): "
                                         rf"{image_id} \(256x512\).*data.image_shape: \[128, 256\]"):
        read_train(cfg.data)
    # with the size given it is an error
    with pytest.raises(DataError, match=rf"1 image\(s\) in .* are not 128x256 as expected: {image_id} \(256x512\)"):
        read_train(cfg.data.model_copy(update={"image_shape": (128, 256)}))


def test_a_mask_png_of_another_size_is_an_error_without_image_shape(tmp_path):
    from segfold.data.formats import read_train

    root = tmp_path / "pngs"
    for folder in ("train_images", "train_masks"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(root / "train_images" / f"im{i}.png"), rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
        mask = np.zeros((32, 48) if i != 1 else (48, 32), dtype=np.uint8)
        mask[4:9, 5:20] = 255
        cv2.imwrite(str(root / "train_masks" / f"im{i}.png"), mask)
    cfg = validate_config({"data": {"root": str(root), "format": "png_binary", "classes": ["x"],
                                    "train_csv": None, "image_suffix": "", "mask_pattern": "{id}"}})
    assert cfg.data.image_shape is None
    with pytest.raises(DataError, match=r"1 mask\(s\) in .*train_masks differ in size from their image: "
                                        r"im1.png \(mask 48x32, image 32x48\)"):
        read_train(cfg.data)


# ------------------------------------------------------------------------------- one-line errors


def test_unknown_encoder_is_refused_when_the_config_loads_with_close_matches(tmp_path, run_script):
    with pytest.raises(ConfigError, match=r"key 'model.encoder_name' = 'efficientnet-bz': Unknown encoder "
                                          r"'efficientnet-bz'. Did you mean: efficientnet-b"):
        validate_config({"model": {"encoder_name": "efficientnet-bz"}})
    line = one_line_error(run_script("make_folds", "--set", "model.encoder_name=resnet3",
                                     f"experiment.output_root={tmp_path}"))
    assert "Unknown encoder 'resnet3'. Did you mean: resnet34" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b"])
def test_experiment_name_must_be_a_plain_folder_name(name, tmp_path):
    with pytest.raises(ConfigError, match=rf"key 'experiment.name' = '{'[.][.]' if name == '..' else '.*'}': must be "
                                          "a plain folder name"):
        validate_config({"experiment": {"name": name}})


def test_output_root_that_is_a_file_is_one_line_and_the_file_is_kept(demo_root, tmp_path, run_script):
    blocker = tmp_path / "outputs"
    blocker.write_text("my notes\n")
    line = one_line_error(run_script("make_folds", "--set", f"data.root={demo_root}",
                                     f"experiment.output_root={blocker}"))
    assert f"{blocker} is a file, not a folder" in line
    assert blocker.read_text() == "my notes\n"
    # the same for the experiment folder itself
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny").write_text("x")
    with pytest.raises(OutputError, match=r"out/tiny is a file, not a folder"):
        from segfold.data.folds import make_folds, write_folds
        from segfold.data.formats import read_train

        cfg = tiny_config(demo_root, tmp_path / "out")
        write_folds(cfg, make_folds(cfg, read_train(cfg.data)))
    assert (tmp_path / "out" / "tiny").read_text() == "x"


def test_submission_path_that_is_a_folder_is_an_error_and_the_folder_is_kept(tmp_path):
    from segfold.submit import write_submission

    folder = tmp_path / "submission.csv"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    frame = pd.DataFrame({"ImageId": ["a"], "EncodedPixels": ["1 2"]})
    with pytest.raises(OutputError, match=r"submission.csv is a folder; give a file name"):
        write_submission(frame, folder)
    assert (folder / "mine.txt").read_text() == "keep" and [p.name for p in folder.iterdir()] == ["mine.txt"]
