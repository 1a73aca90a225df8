"""Labels a probe cannot score are refused before any embedding work, with a message that says why."""

from __future__ import annotations

import pandas as pd
import pytest

from instructue_plugin.errors import ConfigError, DataValidationError
from training.evaluate.runner import BINARY_TASKS, TASKS, EvalSettings, eval_rows, require_probe_ready


def test_a_folder_without_the_tasks_labels_is_refused_naming_them():
    movielens_like = pd.DataFrame({"user_id": range(40), "gender": [0, 1] * 20, "age_bracket": [1, 0] * 20})
    with pytest.raises(DataValidationError, match="fund_purchase.*--dataset"):
        require_probe_ready(movielens_like, TASKS, BINARY_TASKS)


def test_a_binary_task_with_too_few_positives_for_five_folds_is_refused():
    labels = pd.DataFrame({"user_id": range(40), "gender": [1] * 4 + [0] * 36})
    with pytest.raises(DataValidationError, match="'gender' has 4 positive and 36 negative"):
        require_probe_ready(labels, ["gender"], ["gender"])
    labels.loc[4, "gender"] = 1
    require_probe_ready(labels, ["gender"], ["gender"])  # five of each class: one per fold


def test_max_users_below_one_is_a_config_error(small_data, tmp_path):
    with pytest.raises(ConfigError, match="at least 1"):
        eval_rows(EvalSettings(data=small_data, model=tmp_path, max_users=0))
    labels, features = eval_rows(EvalSettings(data=small_data, model=tmp_path, max_users=7))
    assert len(labels) == len(features) == 7
