"""The InstructUE model on the `tiny` preset: read-out, padding, save/load, instructions, item cache."""

from __future__ import annotations

import json
import logging
import math
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

import instructue_plugin
from instructue_plugin.config import USER_TOKEN, config_for_preset
from instructue_plugin.embedder import TorchEmbedder
from instructue_plugin.errors import (
    ConfigError,
    CorruptModelError,
    DataValidationError,
    ModelNotFoundError,
    SchemaMismatchError,
)
from instructue_plugin.featurize import featurize
from instructue_plugin.model import InstructUEModel
from tests.helpers import feature_rows, select_rows

FUND = "Represent this user for predicting fund purchases in the next 30 days."
CHURN = "Represent this user for predicting churn in the next 30 days."


@pytest.fixture(scope="module")
def model() -> InstructUEModel:
    return InstructUEModel.create(config_for_preset("tiny")).eval()


@pytest.fixture(scope="module")
def embedder(model) -> TorchEmbedder:
    return TorchEmbedder(model)


@pytest.fixture(scope="module")
def rows() -> dict[str, list]:
    # Row 1 lacks two sources, row 3 lacks its profile: lengths differ, so batches need padding.
    return feature_rows(6, seed=1, missing={1: ["bill", "search"], 3: ["profile"]})


def test_user_token_sits_at_the_read_out_position_with_both_paddings(model, rows):
    users = featurize(rows, max_items_per_source=model.config.max_items_per_source)
    user_id = model.llm_tokenizer.token_to_id(USER_TOKEN)
    for side in ("right", "left"):
        model.builder.config = model.config.model_copy(update={"padding_side": side})
        inputs = model.builder.build(users, [FUND, "", CHURN, FUND, "", CHURN])
        picked = inputs.input_ids[np.arange(len(users)), inputs.user_position]
        assert (picked == user_id).all(), side
        lengths = inputs.attention_mask.sum(1)
        assert len(set(lengths.tolist())) > 1, "the batch must actually be padded"
    model.builder.config = model.config


def test_control_tokens_written_in_an_instruction_are_read_as_text(model, rows):
    users = featurize(select_rows(rows, [0]), max_items_per_source=model.config.max_items_per_source)
    added = sorted(model.llm_tokenizer.get_added_tokens_decoder())  # <USER>, <item>, <bill>, <|im_end|>, ...
    text = "for churn " + "".join(model.llm_tokenizer.id_to_token(i) for i in added)
    plain = model.builder.build(users, ["for churn"])
    injected = model.builder.build(users, [text])
    added_ids = set(added)
    # The same control tokens as without the injected text; what it adds is ordinary text tokens.
    assert sorted(i for i in injected.input_ids[0] if i in added_ids) == sorted(
        i for i in plain.input_ids[0] if i in added_ids
    )
    assert injected.input_ids.shape[1] > plain.input_ids.shape[1]
    # Ordinary instructions tokenize as before.
    assert model.builder.encode_texts([FUND], limit=64, what="t") == [
        model.llm_tokenizer.encode(FUND, add_special_tokens=False).ids
    ]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_does_not_change_a_users_embedding(model, rows, side):
    config = model.config.model_copy(update={"padding_side": side})
    model.builder.config = config
    try:
        embedder = TorchEmbedder(model)
        batched = embedder.embed(rows, FUND)
        for row in range(len(batched)):
            alone = embedder.embed(select_rows(rows, [row]), FUND)
            np.testing.assert_allclose(alone[0], batched[row], atol=2e-5)
    finally:
        model.builder.config = model.config


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_mlp_on_the_user_row_alone_gives_the_full_decoders_embedding(model, rows, side):
    model.builder.config = model.config.model_copy(update={"padding_side": side})
    try:
        users = featurize(rows, max_items_per_source=model.config.max_items_per_source)
        tensors = model.tensors(model.builder.build(users, [FUND, "", CHURN, FUND, "", CHURN]))
        with torch.inference_mode():
            embedded = model(**tensors)
            user_position = tensors.pop("user_position")
            hidden = model.user_hidden(**tensors)  # every row of the last layer computed
            full = model.project(hidden[torch.arange(len(users)), user_position])
    finally:
        model.builder.config = model.config
    torch.testing.assert_close(embedded, full, atol=1e-6, rtol=0)
    last_norm = model.llm.get_base_model().get_decoder().layers[-1].post_attention_layernorm
    assert hidden.shape[1] > 1 and not last_norm._forward_hooks, "the read-out hook outlives the call"


def test_missing_sources_are_omitted_not_zero_filled(model, rows):
    users = featurize(rows, max_items_per_source=model.config.max_items_per_source)
    assert set(users[1].sources) == {"miniprogram", "page_path", "app"}
    inputs = model.builder.build([users[1]], [""])
    bill_open = model.llm_tokenizer.token_to_id("<bill>")
    search_open = model.llm_tokenizer.token_to_id("<search>")
    assert bill_open not in inputs.input_ids[0] and search_open not in inputs.input_ids[0]
    assert users[3].profile is None


def test_embeddings_are_normalized_float32_and_deterministic(embedder, rows):
    first = embedder.embed(rows, FUND)
    second = embedder.embed(rows, FUND)
    assert first.dtype == np.float32 and first.shape == (6, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, second)


def test_instruction_changes_the_embedding(embedder, rows):
    fund = embedder.embed(rows, FUND)
    churn = embedder.embed(rows, CHURN)
    general = embedder.embed(rows)
    assert np.abs(fund - churn).max() > 1e-3
    assert np.abs(fund - general).max() > 1e-3
    per_row = embedder.embed(rows, [FUND, CHURN, FUND, CHURN, FUND, CHURN])
    np.testing.assert_allclose(per_row[0], fund[0], atol=2e-5)
    np.testing.assert_allclose(per_row[1], churn[1], atol=2e-5)


def test_item_cache_matches_direct_encoding(model, rows):
    users = featurize(rows, max_items_per_source=model.config.max_items_per_source)
    texts = sorted({t for u in users for items in u.sources.values() for t in items.texts})
    direct = model.encode_items(texts)
    cached_first = model.item_vectors(texts)
    cached_again = model.item_vectors(list(reversed(texts)))
    np.testing.assert_allclose(cached_first, direct, atol=1e-6)
    np.testing.assert_allclose(cached_again, direct[::-1], atol=1e-6)
    assert all(t in model.item_cache for t in texts)


def test_save_then_load_gives_bit_identical_embeddings(model, embedder, rows, tmp_path):
    model.save_pretrained(tmp_path / "model")
    loaded = instructue_plugin.load(tmp_path / "model")
    assert np.array_equal(loaded.embed(rows, FUND), embedder.embed(rows, FUND))
    assert np.array_equal(loaded.embed(rows), embedder.embed(rows))


def test_a_saved_model_is_readable_by_other_users_under_the_usual_umask(model, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "model")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "model").iterdir() if p.is_file()}
    assert modes and all(mode & 0o044 == 0o044 for mode in modes.values()), modes  # a server of another user


def test_a_served_folder_has_lora_merged_and_embeds_as_trained(rows, tmp_path):
    trained = InstructUEModel.create(config_for_preset("tiny")).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: LoRA's B starts at zero
        for name, parameter in trained.llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    trained.save_pretrained(tmp_path / "model")
    served = instructue_plugin.load(tmp_path / "model")
    assert served.model.lora_merged and not trained.lora_merged
    as_trained = TorchEmbedder(trained).embed(rows, FUND)
    np.testing.assert_allclose(served.embed(rows, FUND), as_trained, atol=1e-5)
    with trained.llm.disable_adapter():
        without_lora = TorchEmbedder(trained).embed(rows, FUND)
    assert np.abs(without_lora - as_trained).max() > 1e-3  # the adapter matters, so the merge is what matches
    with pytest.raises(ConfigError, match="merged"):  # its weights would apply LoRA twice on reload
        served.model.save_pretrained(tmp_path / "again")


def test_loading_refuses_other_schema_and_damaged_folders(model, tmp_path):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["schema_hash"] = "0000000000000000"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SchemaMismatchError, match="retrain"):
        InstructUEModel.from_pretrained(folder)
    model.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CorruptModelError, match="model.safetensors"):
        InstructUEModel.from_pretrained(folder)
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["max_items_per_source"] = "many"  # hand-edited, or written by another version
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptModelError, match="invalid model configuration"):
        InstructUEModel.from_pretrained(folder)
    with pytest.raises(ModelNotFoundError, match="INSTRUCTUE_MODEL"):
        instructue_plugin.load(tmp_path / "nowhere")


@pytest.mark.parametrize("null", [None, pd.NA, math.nan], ids=["None", "pandas.NA", "NaN"])
def test_unknown_user_gets_nan_row_without_failing_others(embedder, rows, null):
    # Feast returns None for an absent user; duckdb reads give pandas.NA, and a pandas left merge NaN.
    mixed = {name: rows[name][:2] + [null] for name in rows}
    out = embedder.embed(pd.DataFrame(mixed) if null is not None else mixed, FUND)
    assert np.isnan(out[2]).all()
    np.testing.assert_allclose(out[:2], embedder.embed(select_rows(rows, [0, 1]), FUND), atol=2e-5)


def test_a_graph_overflow_is_logged_not_passed_off_as_an_unknown_user(model, rows, caplog):
    class OverflowingEmbedder(TorchEmbedder):  # a backend whose graph overflows for its first user
        def _run_user_graph(self, arrays):
            vectors = super()._run_user_graph(arrays)
            vectors[0, 0] = np.inf
            return vectors

    with caplog.at_level(logging.ERROR):
        out = OverflowingEmbedder(model).embed(select_rows(rows, [0]), FUND)
    assert np.isnan(out).all()
    assert "1 of 1 users got a non-finite embedding from OverflowingEmbedder" in caplog.text


def test_non_finite_numbers_are_neutralized(embedder, rows):
    broken = {name: [list(v) if isinstance(v, list) else v for v in values] for name, values in rows.items()}
    broken["bill_amount"][0][0] = math.nan
    broken["app_minutes"][0][0] = math.inf
    broken["profile_age"][0] = math.nan
    out = embedder.embed(broken, FUND)
    assert np.isfinite(out).all()


def test_numbers_too_large_for_float32_take_the_missing_value_fallback(rows):
    huge = {name: list(values) for name, values in rows.items()}
    huge["profile_age"][0] = 1e300  # finite in float64, inf once scaled to float32 (age has no log transform)
    missing = {name: list(values) for name, values in rows.items()}
    missing["profile_age"][0] = None
    got, expected = (featurize(select_rows(r, [0]), max_items_per_source=64)[0].profile for r in (huge, missing))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, expected)


def test_float32_nan_profile_cells_are_nulls():
    # Profile columns read as float32 arrays: an unknown user's cells are numpy NaNs, not Python floats.
    from instructue_plugin.schema import feature_columns

    row = {column: [None] for column in feature_columns()}
    row |= {column: [np.float32("nan")] for column in row if column.startswith("profile_")}
    assert featurize(row, max_items_per_source=4)[0].is_empty


def test_feast_full_feature_names_are_read_like_short_ones(embedder, rows):
    from instructue_plugin.schema import feature_refs

    # With full_feature_names=True Feast names a column `<view>__<feature>` for the reference `<view>:<feature>`.
    full = {ref.replace(":", "__"): rows[ref.split(":")[1]] for ref in feature_refs()}
    assert "page_path__page_path_ts" in full and "profile__profile_age" in full
    np.testing.assert_array_equal(embedder.embed(full, FUND), embedder.embed(rows, FUND))
    np.testing.assert_array_equal(embedder.embed(pd.DataFrame(full), FUND), embedder.embed(rows, FUND))


def test_an_untimed_item_counts_as_the_oldest_of_its_source(rows):
    from instructue_plugin.featurize import RECENCY_SLOT

    broken = {name: [list(v) if isinstance(v, list) else v for v in values] for name, values in rows.items()}
    assert len(broken["bill_ts"][0]) >= 3
    broken["bill_ts"][0][-1] = math.nan  # the newest bill item loses its time
    before = featurize(select_rows(rows, [0]), max_items_per_source=64)[0].sources["bill"]
    after = featurize(select_rows(broken, [0]), max_items_per_source=64)[0].sources["bill"]
    assert after.texts == [before.texts[-1], *before.texts[:-1]]
    recency = after.numeric[:, RECENCY_SLOT]
    assert recency[0] == recency[1:].max() > 0
    broken["bill_ts"][0] = [math.nan] * len(broken["bill_ts"][0])  # no bill item timed: as old as the scale goes
    untimed = featurize(select_rows(broken, [0]), max_items_per_source=64)[0].sources["bill"]
    np.testing.assert_allclose(untimed.numeric[:, RECENCY_SLOT], 1.0)


def test_bad_rows_raise_clear_errors(embedder, rows):
    ragged = {name: list(values) for name, values in rows.items()}
    ragged["bill_amount"] = [None if v is None else list(v) for v in rows["bill_amount"]]
    ragged["bill_amount"][0] = ragged["bill_amount"][0] + [1.0]
    with pytest.raises(DataValidationError, match="bill_amount"):
        embedder.embed(ragged)
    wrong_type = {name: list(values) for name, values in rows.items()}
    wrong_type["profile_age"] = ["old"] * 6
    with pytest.raises(DataValidationError, match="profile_age"):
        embedder.embed(wrong_type)
    for column, cell in (
        ("bill_amount", ["12.5", "lots"]),  # a string that is not a number
        ("bill_ts", np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[us]")),  # not unix seconds
        ("app_minutes", [[3.0], [4.0]]),  # nested lists
    ):
        source = column.split("_")[0]
        bad = {name: [v[:] if isinstance(v, list) else v for v in values] for name, values in rows.items()}
        row = next(i for i, v in enumerate(bad[f"{source}_ts"]) if v is not None and len(v) >= 2)
        for name in [n for n in bad if n.startswith(f"{source}_")]:
            bad[name][row] = bad[name][row][:2]
        bad[column][row] = cell
        with pytest.raises(DataValidationError, match=f"{column}.*row {row}.*not a number"):
            embedder.embed(bad)
    partial = {name: values for name, values in rows.items() if name != "app_minutes"}
    with pytest.raises(DataValidationError, match="app_minutes"):
        embedder.embed(partial)
    scalar = {name: list(values) for name, values in rows.items()}
    scalar["bill_ts"][0] = 1_700_000_000  # one time, not a list of them
    with pytest.raises(DataValidationError, match="bill_ts.*row 0.*expected a list"):
        embedder.embed(scalar)
    with pytest.raises(DataValidationError, match="none of the six views' feature columns"):
        embedder.embed({"user_id": [1, 2], "bill__amount": [[1.0], [2.0]]})
    with pytest.raises(DataValidationError, match="instructions"):
        embedder.embed(rows, [FUND, CHURN])
    for instruction in (5, b"for churn"):
        with pytest.raises(DataValidationError, match="instruction is a"):
            embedder.embed(rows, instruction)
    with pytest.raises(DataValidationError, match="batch_size"):
        embedder.embed(rows, batch_size=0)
    untimed = {name: list(values) for name, values in rows.items()}
    untimed["bill_ts"][0] = []  # items without their times would be dropped
    with pytest.raises(DataValidationError, match="bill_.*row 0|row 0.*bill_.*items but 'bill_ts' has none"):
        embedder.embed(untimed)
    in_milliseconds = {name: list(values) for name, values in rows.items()}
    in_milliseconds["bill_ts"][0] = [1000.0 * value for value in in_milliseconds["bill_ts"][0]]
    with pytest.raises(DataValidationError, match="bill_ts.*unix seconds"):
        embedder.embed(in_milliseconds)
    with pytest.raises(DataValidationError, match="dict of lists.*not a list"):
        embedder.embed([{"bill_ts": [1.0]}])
    with pytest.raises(DataValidationError, match="column 'bill_ts' is a int"):
        embedder.embed({"bill_ts": 5})


def test_overlong_instruction_is_cut_to_the_token_budget(embedder, model, rows):
    long_instruction = "Represent this user for fund marketing. " * 250  # 10,000 characters
    tokens = model.llm_tokenizer.encode(long_instruction, add_special_tokens=False).ids
    prefix = model.llm_tokenizer.decode(tokens[: model.config.max_instruction_tokens])
    assert len(long_instruction) == 10_000
    np.testing.assert_allclose(embedder.embed(rows, long_instruction), embedder.embed(rows, prefix), atol=2e-5)


def test_answer_says_what_it_was_trained_to_say_and_stops(rows):
    from training.trainer import TrainConfig, TrainingStep

    torch.manual_seed(0)
    model = InstructUEModel.create(config_for_preset("tiny", lora_dropout=0.0))
    row = select_rows(rows, [0])
    question, answer = "What does this user spend on?", "Mostly travel and groceries."
    inputs = model.builder.build(featurize(row, max_items_per_source=8), [question], [answer])
    step = TrainingStep(model, TrainConfig(data=".", out=".", preset="tiny", loss="ar"))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(60):  # overfit the one answer
        loss = step(model.tensors(inputs), torch.from_numpy(inputs.labels), None, None, None)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert model.answer(row, question, max_new_tokens=16) == answer  # and no more: it ends


def test_answer_takes_one_known_users_row(model, rows):
    with pytest.raises(ValueError, match="one feature row"):
        model.answer(select_rows(rows, [0, 1]), "?")
    unknown = {name: [None] for name in rows}
    with pytest.raises(DataValidationError, match="no data"):
        model.answer(unknown, "What does this user spend on?")
    for budget in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="max_new_tokens must be a whole number >= 1"):
            model.answer(select_rows(rows, [0]), "What does this user spend on?", max_new_tokens=budget)


def test_two_embedders_of_one_model_embed_from_many_threads_as_serially(model, rows):
    # forward() hooks a shared layer for the call: the lock must be the model's, not each embedder's.
    first, second = TorchEmbedder(model), TorchEmbedder(model)
    jobs = [
        ([first, second][i % 2], select_rows(rows, [i % 6, (i + 2) % 6]), [FUND, CHURN, None][i % 3]) for i in range(12)
    ]
    serial = [embedder.embed(features, instruction) for embedder, features, instruction in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda job: job[0].embed(job[1], job[2]), jobs))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, other)


def test_item_encoder_gradients_are_off_and_lora_is_on(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("item_encoder.") for n in trainable)
    assert any("lora_A" in n for n in trainable)
    assert {"head.weight", "special_embeddings.weight"} <= trainable
    base = [n for n in trainable if n.startswith("llm.") and "lora_" not in n]
    assert base == ["llm.base_model.model.model.norm.weight"]  # only the final norm of the frozen backbone
    assert torch.is_grad_enabled()


def test_summary_token_covers_at_most_the_items_a_snapshot_row_holds(rows):
    from instructue_plugin.featurize import COUNT_SLOT
    from instructue_plugin.schema import SEQUENCE_BY_NAME

    cap = SEQUENCE_BY_NAME["bill"].max_items
    long = {name: [list(v) if isinstance(v, list) else v for v in values] for name, values in rows.items()}
    for name in [n for n in long if n.startswith("bill_")]:
        long[name][0] = (long[name][0] * (cap // len(long[name][0]) + 2))[: cap + 5]  # 5 more than a row holds
    long["bill_ts"][0] = list(range(1_700_000_000, 1_700_000_000 + cap + 5))
    bill = featurize(select_rows(long, [0]), max_items_per_source=4)[0].sources["bill"]
    assert len(bill.summary_texts) == cap and bill.summary_numeric[COUNT_SLOT] == pytest.approx(1.0)
    assert bill.texts == bill.summary_texts[-4:]


def test_summary_token_averages_every_stored_item(model, rows):
    users = featurize(rows, max_items_per_source=2)
    bill = users[0].sources["bill"]
    assert len(bill.texts) == 2 and len(bill.summary_texts) == len(rows["bill_ts"][0]) > 2
    assert bill.summary_numeric[-1] == 1.0 and (bill.numeric[:, -1] == 0).all()
    inputs = model.builder.build([users[0]], [""])
    vectors = np.random.default_rng(0).normal(size=(len(inputs.item_texts), 4)).astype(np.float32)
    table = inputs.graph_inputs(vectors)["item_vectors"]
    assert len(table) == len(inputs.item_texts) + len(users[0].sources)  # one summary row per present source
    bill_kind = 1
    positions = np.flatnonzero(inputs.token_kind[0] == bill_kind)
    summary_row = inputs.item_index[0, positions[0]]  # the summary token comes first in its source
    expected = vectors[[inputs.item_texts.index(t) for t in bill.summary_texts]].mean(0)
    np.testing.assert_allclose(table[summary_row], expected, rtol=1e-6)
    assert [inputs.item_texts[i] for i in inputs.item_index[0, positions[1:]]] == bill.texts


def test_the_feature_views_embedder_is_reloaded_when_the_model_folder_is_replaced(model, tmp_path):
    from instructue_plugin.feast_udf import load_embedder

    folder = tmp_path / "model"
    model.save_pretrained(folder)
    first = load_embedder(folder)
    assert load_embedder(folder) is first  # loaded once per process
    model.save_pretrained(folder)  # a new model written into the same folder
    assert load_embedder(folder) is not first


@pytest.mark.parametrize("field", ["max_item_tokens", "max_instruction_tokens", "max_answer_tokens"])
def test_token_budgets_below_one_are_refused(field):
    from pydantic import ValidationError

    tiny = config_for_preset("tiny")
    with pytest.raises(ValidationError, match=f"{field}[\\s\\S]*must be >= 1"):
        type(tiny).model_validate({**tiny.model_dump(), field: 0})


def test_the_config_seed_alone_sets_the_initial_trainable_weights(tmp_path):
    # A backbone loaded from a folder (hf:<dir>) draws no random numbers of its own, unlike `tiny`'s.
    from instructue_plugin.backbones import build_llm, smollm2_dir, tiny_llm_config

    folder = tmp_path / "llm"
    build_llm(tiny_llm_config(config_for_preset("tiny"), vocab_size=49152)).save_pretrained(folder)
    for tokenizer_file in smollm2_dir().glob("*token*"):
        shutil.copy(tokenizer_file, folder)

    def lora_a(seed: int, prior: int) -> torch.Tensor:
        torch.manual_seed(prior)  # whatever ran before must not matter
        model = InstructUEModel.create(config_for_preset(f"hf:{folder}", seed=seed))
        return next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(lora_a(seed=1, prior=10), lora_a(seed=1, prior=20))
    assert not torch.equal(lora_a(seed=1, prior=10), lora_a(seed=2, prior=10))


def _saved_tiny_llm(folder):
    from instructue_plugin.backbones import build_llm, tiny_llm_config

    llm = build_llm(tiny_llm_config(config_for_preset("tiny"), vocab_size=49152), seed=0)
    llm.save_pretrained(folder)
    return llm


def test_a_backbone_cut_to_fewer_layers_loads_its_first_layers_without_a_load_report(tmp_path, capfd):
    from instructue_plugin.backbones import load_pretrained_llm

    full = _saved_tiny_llm(tmp_path / "llm")
    capfd.readouterr()
    cut = load_pretrained_llm(config_for_preset(f"hf:{tmp_path / 'llm'}", num_layers=1))
    assert len(cut.model.layers) == 1
    assert torch.equal(cut.model.layers[0].mlp.up_proj.weight, full.model.layers[0].mlp.up_proj.weight)
    # transformers writes its report to stderr itself; the skipped layer 1 is expected, not news
    assert "UNEXPECTED" not in capfd.readouterr().err


def test_the_packaged_item_encoder_loads_without_its_unused_pooler_reported(capfd):
    from instructue_plugin.backbones import load_item_encoder

    capfd.readouterr()
    encoder, _ = load_item_encoder(config_for_preset("smol-cpu"))
    assert encoder.pooler is None and not encoder.training
    printed = capfd.readouterr().err
    assert "UNEXPECTED" not in printed and "not sharded" not in printed


def test_the_backbone_cache_converted_once_is_readable_by_other_users(tmp_path, monkeypatch):
    import os
    import stat

    from instructue_plugin.backbones import smollm2_dir

    monkeypatch.setenv("INSTRUCTUE_CACHE", str(tmp_path / "cache"))
    previous = os.umask(0o022)
    try:
        folder = smollm2_dir()
    finally:
        os.umask(previous)
    assert folder.parent == tmp_path / "cache" and [p.name for p in folder.parent.iterdir()] == [folder.name]
    for path in [folder, *folder.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path  # a server running as another user


def test_an_unwritable_backbone_cache_is_a_clear_error(tmp_path, monkeypatch):
    from instructue_plugin.backbones import smollm2_dir

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("INSTRUCTUE_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(ConfigError, match="cannot write the backbone cache.*set INSTRUCTUE_CACHE"):
        smollm2_dir()


def test_a_backbone_checkpoint_lacking_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from instructue_plugin.backbones import load_pretrained_llm

    _saved_tiny_llm(tmp_path / "llm")
    weights_file = tmp_path / "llm" / "model.safetensors"
    weights = load_file(weights_file)
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(CorruptModelError, match=r"lacks weights of the model.*layers\.1\.mlp\.up_proj"):
        load_pretrained_llm(config_for_preset(f"hf:{tmp_path / 'llm'}"))  # not random values in their place


def test_a_cut_answer_is_not_taught_to_end(model, rows):
    users = featurize(select_rows(rows, [0, 2]), max_items_per_source=model.config.max_items_per_source)
    limit = model.config.max_answer_tokens
    long_answer = "The user pays for travel and groceries every week. " * 10
    inputs = model.builder.build(users, [FUND, FUND], ["Yes.", long_answer])
    end = model.builder.answer_end[-1]
    targets = [row[row != -100].tolist() for row in inputs.labels]
    assert targets[0][-1] == end  # a whole answer ends with the end token
    assert len(targets[1]) == limit and end not in targets[1]  # a cut one stops where it was cut
    ids, mask = model.builder.build_answers(["Yes.", long_answer])
    assert ids[1, mask[1].sum() - 1] == end  # the answer tower reads the end token of both
