"""The command line turns bad option values into one usage line, not a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from instructue_plugin.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["embed", "--model", "m", "--data", "d", "--users", "1", "--at", "yesterday"], "--at must be a date"),
        (["bench", "embed", "--batches", "1,x"], "--batches must be comma-separated positive integers"),
        (["bench", "embed", "--batches", "0"], "--batches must be comma-separated positive integers"),
        (["embed", "--model", "m", "--data", "d", "--users", " , "], "--users must be comma-separated integers"),
        (["embed", "--model", "m", "--data", "d", "--users", "1", "--out", "nowhere/x.parquet"], "does not exist"),
    ],
    ids=["--at", "--batches not a number", "--batches zero", "--users empty", "--out in a missing folder"],
)
def test_bad_option_values_give_a_usage_error(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_an_unknown_exporter_is_an_error_line():
    result = CliRunner().invoke(app, ["export", "--model", "m", "--out", "o", "--exporter", "onnxscript"])
    assert result.exit_code == 1
    assert "unknown exporter 'onnxscript'" in result.output and "Traceback" not in result.output
