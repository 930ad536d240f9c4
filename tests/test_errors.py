"""Tests for leukviz.errors: every user-facing error shares one base and keeps the built-in base it had."""

import argparse

import pytest

from leukviz import cli
from leukviz.core.errors import LeukvizError
from leukviz.datasets import data
from leukviz.models import backbones, config
from leukviz.runstore import runs
from leukviz.serving import export
from leukviz.training import checkpoints, engine


@pytest.mark.parametrize("cls, builtin", [
    (data.DataError, ValueError), (data.ImageError, ValueError), (config.ConfigError, ValueError),
    (checkpoints.CheckpointError, ValueError), (backbones.WeightsUnavailable, RuntimeError),
    (engine.TrainingDiverged, RuntimeError), (engine.OutOfMemory, RuntimeError), (export.ExportError, RuntimeError),
    (runs.AlreadyRunning, RuntimeError), (cli.CliError, Exception),
])
def test_user_facing_errors_share_the_base_and_keep_their_own(cls, builtin):
    assert issubclass(cls, LeukvizError) and issubclass(cls, builtin)
    with pytest.raises(builtin, match="one line"):
        raise cls("one line")


def test_stopped_is_no_error():
    assert not issubclass(engine.Stopped, LeukvizError), "a requested stop is not reported as a failure"


def test_the_cli_reports_any_of_them_as_one_line(capsys, monkeypatch):
    def fail(args):
        raise engine.OutOfMemory("ran out of memory with batch size 64")

    parsed = argparse.Namespace(func=fail, json=False)
    monkeypatch.setattr(cli, "build_parser", lambda: argparse.Namespace(parse_known_args=lambda argv: (parsed, [])))
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "error: ran out of memory with batch size 64\n"
