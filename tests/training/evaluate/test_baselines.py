"""The zero-shot LLM baseline's text: every source and the profile fit the token budget."""

from __future__ import annotations

import pandas as pd
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from instructue_plugin.schema import SEQUENCE_SOURCES
from tests.helpers import feature_rows
from training.evaluate.baselines import behaviours, fitted_serialization, serialize_user


def _word_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return tokenizer


def test_serialization_puts_the_profile_first_and_names_every_source():
    features = pd.DataFrame(feature_rows(2, seed=1))
    text = serialize_user(behaviours(features)[0], features.iloc[0], max_items=10)
    lines = text.split("\n")
    assert lines[0].startswith("profile: ")
    assert [line.split(":")[0] for line in lines[1:]] == [s.name for s in SEQUENCE_SOURCES]


def test_a_long_history_keeps_every_source_and_the_profile_with_fewer_newest_items():
    features = pd.DataFrame(feature_rows(3, seed=2))
    users = behaviours(features)
    tokenizer = _word_tokenizer()
    for i, user in enumerate(users):
        row = features.iloc[i]
        full = len(tokenizer.encode(serialize_user(user, row, max_items=32)).ids)
        budget = full // 2
        ids = fitted_serialization(user, row, tokenizer=tokenizer, max_items=32, max_tokens=budget)
        assert len(ids) <= budget
        kept = next(
            k for k in range(32, 0, -1) if ids == tokenizer.encode(serialize_user(user, row, max_items=k)).ids
        )  # uncut
        assert len(tokenizer.encode(serialize_user(user, row, max_items=kept + 1)).ids) > budget  # the most that fit
    short = fitted_serialization(users[0], features.iloc[0], tokenizer=tokenizer, max_items=32, max_tokens=5)
    assert len(short) == 5  # even one item per source is too long: the text is cut at the budget
