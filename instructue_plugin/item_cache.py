"""Item vectors cached per distinct item text.

Item texts are identities (merchant and category, program and action, path, query), so they repeat across
users and each distinct text is encoded once. The cache is saved next to a model or export and reused.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CACHE_VECTORS_FILE = "item_cache.npy"
CACHE_TEXTS_FILE = "item_cache.json"
DEFAULT_MAX_BYTES = 512 * 2**20  # vectors kept beyond a loaded catalog: 349,525 texts of all-MiniLM-L6-v2


class ItemVectorCache:
    """A thread-safe map from item text to its (D,) float32 vector, growing as new texts are seen.

    Beyond `max_entries` texts (default: as many as fit in `DEFAULT_MAX_BYTES`, and at least the catalog loaded
    with the model), new texts are still encoded but no longer kept (logged once), so memory stays bounded under
    an unbounded stream of unseen items (free-text search queries, say).
    """

    def __init__(self, *, dim: int, max_entries: int | None = None) -> None:
        self.dim = dim
        self.max_entries = max_entries if max_entries is not None else max(1, DEFAULT_MAX_BYTES // (4 * dim))
        self._index: dict[str, int] = {}  # text -> its row of `_vectors`
        self._vectors = np.zeros((0, dim), dtype=np.float32)  # rows beyond len(_index) are spare capacity
        self._lock = threading.Lock()
        self._warned_full = False

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: str) -> bool:
        return text in self._index

    def lookup(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors (N, D) for `texts`, calling `encode` once for the distinct texts not cached yet."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._index))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            encoded = np.asarray(encode(missing), dtype=np.float32)
            fresh = dict(zip(missing, encoded, strict=True))
            self.add(missing, encoded)
        with self._lock:
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for i, text in enumerate(texts):
                row = self._index.get(text)
                out[i] = self._vectors[row] if row is not None else fresh[text]
        return out

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        """Insert vectors for texts not cached yet (the first of repeated texts), up to `max_entries`.

        Storage grows by doubling, so inserting N texts one request at a time copies O(N) rows, not O(N²).
        """
        with self._lock:
            unseen: dict[str, np.ndarray] = {}
            for text, vector in zip(texts, vectors, strict=True):
                if text not in self._index:
                    unseen.setdefault(text, vector)
            new = list(unseen.items())
            room = self.max_entries - len(self._index)
            if len(new) > room:
                if not self._warned_full:
                    self._warned_full = True
                    logger.warning(
                        "item cache full at %d texts: further new items are encoded each time",
                        self.max_entries,
                    )
                new = new[: max(room, 0)]
            if not new:
                return
            start, end = len(self._index), len(self._index) + len(new)
            if end > len(self._vectors):
                grown = np.zeros((min(max(end, 2 * len(self._vectors)), self.max_entries), self.dim), np.float32)
                grown[:start] = self._vectors[:start]
                self._vectors = grown
            self._vectors[start:end] = np.stack([v for _, v in new])
            for offset, (text, _) in enumerate(new):
                self._index[text] = start + offset

    def save(self, folder: Path) -> None:
        """Write the cache into `folder` (vectors as .npy, texts as JSON)."""
        with self._lock:
            np.save(folder / CACHE_VECTORS_FILE, self._vectors[: len(self._index)])
            (folder / CACHE_TEXTS_FILE).write_text(json.dumps(list(self._index)))

    @classmethod
    def load(cls, folder: Path, *, dim: int) -> ItemVectorCache:
        """Read a cache written by `save`; an absent, incomplete or unreadable one gives an empty cache (logged):
        the vectors are derived data, encoded again on first use."""
        cache = cls(dim=dim)
        if not (folder / CACHE_VECTORS_FILE).exists():
            return cache
        try:
            vectors = np.load(folder / CACHE_VECTORS_FILE, allow_pickle=False)
            texts = json.loads((folder / CACHE_TEXTS_FILE).read_text())
        except (OSError, ValueError) as error:  # a missing texts file, a truncated .npy, broken JSON
            logger.warning("item cache in %s cannot be read (%s): ignored", folder, error)
            return cache
        count = len(texts) if isinstance(texts, list) else None
        if count is None or vectors.shape != (count, dim):
            logger.warning(
                "item cache in %s has vectors of shape %s for %s texts: ignored", folder, vectors.shape, count
            )
            return cache
        cache.max_entries = max(cache.max_entries, count)  # the saved catalog is kept whole
        cache.add(texts, vectors)
        return cache
