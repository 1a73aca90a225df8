"""A small synthetic data folder and its UserQA, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.synth import generate
from training.userqa import build_userqa, write_userqa


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synth"
    generate(out, users=300, seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def small_userqa(small_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("userqa") / "userqa.parquet"
    write_userqa(build_userqa(small_data, seed=0, progress=False), path)
    return path
