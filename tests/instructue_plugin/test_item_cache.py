"""The item-vector cache: repeated texts, growth, the size bound, and damaged cache files."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from instructue_plugin.item_cache import CACHE_TEXTS_FILE, CACHE_VECTORS_FILE, ItemVectorCache


def vectors_for(texts: list[str], dim: int = 4) -> np.ndarray:
    """A distinct vector per text (its hash seeds it), so a mixed-up row is visible."""
    return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(dim) for t in texts]).astype(
        np.float32
    )


def test_repeated_texts_in_one_add_keep_every_later_text_on_its_own_row():
    cache = ItemVectorCache(dim=4)
    cache.add(["a", "a", "b"], np.stack([vectors_for(["a"])[0], np.zeros(4, np.float32), vectors_for(["b"])[0]]))
    cache.add(["c"], vectors_for(["c"]))
    assert len(cache) == 3
    got = cache.lookup(["c", "b", "a"], encode=lambda texts: pytest.fail(f"encoded {texts} again"))
    np.testing.assert_array_equal(got, vectors_for(["c", "b", "a"]))


def test_many_small_adds_grow_the_table_and_keep_earlier_rows():
    cache = ItemVectorCache(dim=4)
    texts = [f"query {i}" for i in range(1000)]
    for text in texts:  # one new text per request, as free-text search queries arrive
        cache.add([text], vectors_for([text]))
    np.testing.assert_array_equal(
        cache.lookup(texts, encode=lambda t: pytest.fail("encoded again")), vectors_for(texts)
    )


def test_full_cache_still_encodes_new_texts_but_keeps_no_more(caplog):
    cache = ItemVectorCache(dim=4, max_entries=2)
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return vectors_for(texts)

    with caplog.at_level(logging.WARNING):
        first = cache.lookup(["a", "b", "c"], encode)
        second = cache.lookup(["c"], encode)
    np.testing.assert_array_equal(first, vectors_for(["a", "b", "c"]))
    np.testing.assert_array_equal(second, vectors_for(["c"]))
    assert len(cache) == 2 and calls == [["a", "b", "c"], ["c"]]
    assert "item cache full" in caplog.text


def test_save_then_load_round_trips(tmp_path):
    cache = ItemVectorCache(dim=4)
    cache.add(["a", "b", "c"], vectors_for(["a", "b", "c"]))
    cache.save(tmp_path)
    assert np.load(tmp_path / CACHE_VECTORS_FILE).shape == (3, 4)
    loaded = ItemVectorCache.load(tmp_path, dim=4)
    np.testing.assert_array_equal(
        loaded.lookup(["b", "a"], encode=lambda t: pytest.fail("encoded")), vectors_for(["b", "a"])
    )


@pytest.mark.parametrize(
    "damage", ["no texts file", "truncated vectors", "broken json", "texts not a list", "wrong dim"]
)
def test_damaged_cache_files_give_an_empty_cache_with_a_warning(tmp_path, caplog, damage):
    cache = ItemVectorCache(dim=4)
    cache.add(["a", "b"], vectors_for(["a", "b"]))
    cache.save(tmp_path)
    if damage == "no texts file":
        (tmp_path / CACHE_TEXTS_FILE).unlink()
    elif damage == "truncated vectors":
        data = (tmp_path / CACHE_VECTORS_FILE).read_bytes()
        (tmp_path / CACHE_VECTORS_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "broken json":
        (tmp_path / CACHE_TEXTS_FILE).write_text('["a", "b"')
    elif damage == "texts not a list":
        (tmp_path / CACHE_TEXTS_FILE).write_text("7")
    with caplog.at_level(logging.WARNING):
        loaded = ItemVectorCache.load(tmp_path, dim=8 if damage == "wrong dim" else 4)
    assert len(loaded) == 0
    assert "item cache in" in caplog.text and "ignored" in caplog.text


def test_the_default_bound_is_a_memory_budget_that_never_cuts_the_saved_catalog(tmp_path, monkeypatch):
    from instructue_plugin import item_cache

    assert ItemVectorCache(dim=384).max_entries * 384 * 4 <= item_cache.DEFAULT_MAX_BYTES
    monkeypatch.setattr(item_cache, "DEFAULT_MAX_BYTES", 2 * 4 * 4)  # room for two vectors of dim 4
    catalog = ["a", "b", "c"]
    saved = ItemVectorCache(dim=4, max_entries=10)
    saved.add(catalog, vectors_for(catalog))
    saved.save(tmp_path)
    loaded = ItemVectorCache.load(tmp_path, dim=4)
    assert len(loaded) == 3  # the catalog precomputed at export is kept whole
    loaded.add(["d"], vectors_for(["d"]))
    assert len(loaded) == 3  # texts seen while serving are not kept beyond the bound
