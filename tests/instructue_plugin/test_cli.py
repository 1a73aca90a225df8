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
        (
            ["train", "--data", "d", "--out", "o", "--preset", "bogus", "--lr", "-1"],
            "preset: Value error, unknown preset 'bogus'",
        ),
        (["answer", "--model", "m", "--data", "d", "--users", "1", "--max-new-tokens", "0"], "--max-new-tokens"),
    ],
    ids=[
        "--at",
        "--batches not a number",
        "--batches zero",
        "--users empty",
        "--out in a missing folder",
        "train settings",
        "--max-new-tokens zero",
    ],
)
def test_bad_option_values_give_a_usage_error(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert message in output and "Traceback" not in output and "pydantic.dev" not in output


def test_an_unknown_exporter_is_an_error_line():
    result = CliRunner().invoke(app, ["export", "--model", "m", "--out", "o", "--exporter", "onnxscript"])
    assert result.exit_code == 1
    assert "unknown exporter 'onnxscript'" in result.output and "Traceback" not in result.output
