"""The one embedding contract, with a PyTorch and (in `onnx_runtime`) an onnxruntime implementation.

`Embedder.embed(features, instruction=None)` validates and featurizes the Feast rows, looks item vectors up
in the cache (encoding unseen items once), lays users out in length-sorted batches, runs the backend's
user-embedding graph and L2-normalizes. Backends implement only `_run_user_graph` and `_encode_items`, so
parity tests feed both the very same arrays.

Users with no data at all (an unknown user: every source null, no profile) get a row of NaN: the other rows
are unaffected, and the Feast functions turn such rows into null features.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import DataValidationError
from .featurize import UserBehaviour, featurize
from .item_cache import ItemVectorCache
from .sequence import SequenceBuilder

logger = logging.getLogger(__name__)


def normalize_instructions(instruction: str | Sequence[str | None] | None, rows: int) -> list[str]:
    """One instruction string per row: None means general (""), a string applies to every row."""
    if instruction is None:
        return [""] * rows
    if isinstance(instruction, str):
        return [instruction] * rows
    if isinstance(instruction, bytes | bytearray) or not isinstance(instruction, Iterable):
        raise DataValidationError(
            f"instruction is a {type(instruction).__name__}: give a string, one string (or None) per row, or None"
        )
    values = list(instruction)
    if len(values) != rows:
        raise DataValidationError(f"got {len(values)} instructions for {rows} rows; give one per row or one string")
    for i, value in enumerate(values):
        if value is not None and not isinstance(value, str):
            raise DataValidationError(f"instruction {i} is {type(value).__name__}, expected a string or None")
    return [v or "" for v in values]


class Embedder(ABC):
    """Embeds Feast feature rows under an instruction; shared by every backend."""

    # Most users per graph call (None: no limit); larger batches run in parts, each with its own item table.
    max_users_per_run: int | None = None

    def __init__(self, config: ModelConfig, builder: SequenceBuilder, item_cache: ItemVectorCache) -> None:
        self.config = config
        self.builder = builder
        self.item_cache = item_cache

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.config.embedding_dim

    @abstractmethod
    def _run_user_graph(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Run the user-embedding graph on one batch of named arrays; returns (B, E) float32."""

    @abstractmethod
    def _encode_items(self, texts: list[str]) -> np.ndarray:
        """Encode item texts with the item encoder; returns (N, D) float32, L2-normalized."""

    def item_vectors(self, texts: list[str]) -> np.ndarray:
        """Item vectors through the cache (unseen texts are encoded once and kept)."""
        return self.item_cache.lookup(texts, self._encode_items)

    def embed(
        self,
        features: Any,
        instruction: str | Sequence[str | None] | None = None,
        *,
        batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed users from their Feast feature rows.

        Args:
            features: DataFrame or dict of lists, one row per user, with the six views' columns.
            instruction: one string for all rows, one per row, or None (general embedding).
            batch_size: users per graph call.
            on_batch: called with the number of users done after each batch (progress reporting).

        Returns:
            (users, dim) float32, L2-normalized; rows of users with no data at all are NaN.

        Raises:
            DataValidationError: malformed features or instructions, a batch size below 1.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataValidationError(f"batch_size must be a positive integer, got {batch_size!r}")
        users = featurize(features, max_items_per_source=self.config.max_items_per_source)
        instructions = normalize_instructions(instruction, len(users))
        out = np.full((len(users), self.dim), np.nan, dtype=np.float32)
        valid = [i for i, user in enumerate(users) if not user.is_empty]
        if len(valid) < len(users):
            logger.info(
                "%d of %d rows have no data (unknown users?): their embeddings are NaN",
                len(users) - len(valid),
                len(users),
            )
        # Similar lengths together: less padding per batch.
        valid.sort(key=lambda i: _sequence_size(users[i]) + len(instructions[i]) // 4)
        for start in range(0, len(valid), batch_size):
            rows = valid[start : start + batch_size]
            out[rows] = self.embed_behaviour([users[i] for i in rows], [instructions[i] for i in rows])
            if on_batch is not None:
                on_batch(len(rows))
        return out

    def embed_behaviour(self, users: list[UserBehaviour], instructions: list[str]) -> np.ndarray:
        """Embed one batch of already featurized users (no row may be empty).

        A non-finite output row (a numeric overflow in the graph, e.g. under a reduced-precision engine) stays
        NaN, as an unknown user's would, and is logged as an error so it cannot pass for one.
        """
        limit = self.max_users_per_run
        if limit is not None and len(users) > limit:
            return np.concatenate(
                [
                    self.embed_behaviour(users[s : s + limit], instructions[s : s + limit])
                    for s in range(0, len(users), limit)
                ]
            )
        inputs = self.builder.build(users, instructions)
        vectors = self._run_user_graph(inputs.graph_inputs(self.item_vectors(inputs.item_texts)))
        vectors = np.asarray(vectors, dtype=np.float32)
        broken = ~np.isfinite(vectors).all(axis=1)
        if broken.any():
            logger.error(
                "%d of %d users got a non-finite embedding from %s (a numeric overflow in the graph): NaN rows",
                int(broken.sum()),
                len(users),
                type(self).__name__,
            )
            vectors[broken] = np.nan
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


def _sequence_size(user: UserBehaviour) -> int:
    return sum(len(items.texts) for items in user.sources.values())


class TorchEmbedder(Embedder):
    """Embeds with the PyTorch model (a trained model folder); also answers questions about a user."""

    def __init__(self, model: Any) -> None:
        """Args: model: an `InstructUEModel` (put in eval mode here)."""
        super().__init__(model.config, model.builder, model.item_cache)
        self.model = model.eval()
        self._lock = model.run_lock  # the model's, not this embedder's: two embedders may share one model

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TorchEmbedder:
        """Serve a trained model folder: loaded, with LoRA merged into the backbone (fewer matmuls per call)."""
        from .model import InstructUEModel

        return cls(InstructUEModel.from_pretrained(folder).merge_lora())

    def _run_user_graph(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}
        with self._lock, torch.inference_mode():
            return self.model(**tensors).float().numpy()

    def _encode_items(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return self.model.encode_items(texts)

    def answer(self, features_row: Any, question: str, *, max_new_tokens: int = 40) -> str:
        """Describe one user in words (see `InstructUEModel.answer`)."""
        with self._lock:
            return self.model.answer(features_row, question, max_new_tokens=max_new_tokens)
