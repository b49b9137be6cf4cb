"""Logging: one handler on stdout, --quiet / --verbose in every script, rank 0 only under torchrun."""

from __future__ import annotations

import argparse
import logging

from segfold.cli import add_config_arguments, config_from_args
from segfold.logs import RankZeroFilter, setup_logging


def _say_all(name="segfold.probs.views"):
    log = logging.getLogger(name)
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")


def test_quiet_and_verbose_set_the_level(capsys):
    parser = add_config_arguments(argparse.ArgumentParser())
    for argv, expected in (([], ["an info line", "a warning line"]), (["--quiet"], ["a warning line"]),
                           (["-v"], ["a debug line", "an info line", "a warning line"])):
        config_from_args(parser.parse_args(argv))
        _say_all()
        assert capsys.readouterr().out.splitlines() == expected, argv
    setup_logging()
    setup_logging()  # twice: still one handler, one line per record
    _say_all()
    assert capsys.readouterr().out.splitlines() == ["an info line", "a warning line"]


def test_other_ranks_show_only_warnings(capsys, monkeypatch):
    setup_logging()
    monkeypatch.setenv("RANK", "1")
    _say_all()
    assert capsys.readouterr().out.splitlines() == ["a warning line"]
    monkeypatch.setenv("RANK", "0")
    record = logging.LogRecord("segfold", logging.INFO, __file__, 1, "x", None, None)
    assert RankZeroFilter().filter(record)
