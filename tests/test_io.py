"""Atomic writes: complete or absent, never half-written, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from segfold.io import atomic_path, write_json_atomic


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_written_file_has_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'
