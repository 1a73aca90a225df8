"""`instructue answer` on a data folder: one unknown user does not cost the others their answers."""

from __future__ import annotations

from typer.testing import CliRunner

from instructue_plugin.cli import app
from instructue_plugin.config import config_for_preset
from instructue_plugin.model import InstructUEModel


def test_answer_answers_the_known_users_and_names_the_unknown_one(small_data, tmp_path):
    InstructUEModel.create(config_for_preset("tiny")).save_pretrained(tmp_path / "model")
    args = ["answer", "--model", str(tmp_path / "model"), "--data", str(small_data), "--users", "99999,1,2"]
    args += ["--max-new-tokens", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("99999: error:") and "no data" in line for line in lines), result.output
    assert any(line.startswith("1: ") for line in lines) and any(line.startswith("2: ") for line in lines)


def test_answer_with_an_export_folder_says_it_needs_the_trained_model(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text("{}")
    result = CliRunner().invoke(app, ["answer", "--model", str(export), "--data", "d", "--users", "1"])
    assert result.exit_code == 1
    assert "is an ONNX export" in " ".join(result.output.split()) and "Traceback" not in result.output
