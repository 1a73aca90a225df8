"""Lay users out as LLM input sequences (numpy), the same for PyTorch and onnxruntime.

One user's sequence, left to right:

    <|im_start|>user\\n  <bill> S s s s </bill>  <miniprogram> S s s </miniprogram> ...  <profile> p p </profile>
    {instruction tokens}  <|im_end|>\\n<|im_start|>assistant\\n  <USER>  [answer tokens <|im_end|>]

`s` are soft tokens (one per newest item: the source's adapter applied to the item vector and numeric
features), `S` the source's summary token (the same adapter on the mean vector of every stored item, with
the summary's numeric features), `p` the profile tokens. Sources without items are omitted. The embedding
is read at `<USER>`; during training the answer follows `<USER>` and is the autoregressive target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from .config import ITEM_TOKEN, USER_TOKEN, ModelConfig, source_delimiters
from .featurize import UserBehaviour
from .schema import ITEM_NUMERIC_WIDTH, PROFILE, SEQUENCE_SOURCES

logger = logging.getLogger(__name__)

PROMPT_PREFIX = "<|im_start|>user\n"
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
ANSWER_END = "<|im_end|>"
TEXT_KIND = 0  # token_kind of ordinary text tokens; 1..5 are the sequence sources, 6 the profile
PROFILE_KIND = len(SEQUENCE_SOURCES) + 1
IGNORE_INDEX = -100


@dataclass
class ModelInputs:
    """A padded batch of user sequences: the inputs of the user-embedding graph.

    Shapes: B users, L positions, U distinct item texts in the batch, W item numeric width, P profile width.
    """

    input_ids: np.ndarray  # (B, L) int64; soft-token positions hold the <item> placeholder
    token_kind: np.ndarray  # (B, L) int64; TEXT_KIND, source index 1..5, or PROFILE_KIND
    item_index: np.ndarray  # (B, L) int64; row of `item_texts` at soft-token positions, 0 elsewhere
    item_numeric: np.ndarray  # (B, L, W) float32
    profile_vector: np.ndarray  # (B, P) float32
    profile_slot: np.ndarray  # (B, L) int64; which profile token at profile positions, 0 elsewhere
    attention_mask: np.ndarray  # (B, L) int64
    position_ids: np.ndarray  # (B, L) int64
    user_position: np.ndarray  # (B,) int64; index of <USER>
    item_texts: list[str]  # (U,) distinct item texts; item vectors are looked up for these
    summary_groups: list[np.ndarray]  # (S,) rows of `item_texts` averaged into summary row U + s
    labels: np.ndarray | None = None  # (B, L) int64 next-token targets (answers only), else IGNORE_INDEX

    def graph_inputs(self, item_vectors: np.ndarray) -> dict[str, np.ndarray]:
        """The named arrays fed to the user-embedding graph, given the (U, D) vectors of `item_texts`.

        The graph's item table is those vectors followed by one mean vector per summary group.
        """
        item_vectors = np.asarray(item_vectors, dtype=np.float32)
        summaries = [item_vectors[group].mean(axis=0) for group in self.summary_groups]
        if summaries:
            item_vectors = np.concatenate([item_vectors, np.stack(summaries)])
        if len(item_vectors) == 0:  # no items in the batch: one zero row keeps the gather well-defined
            item_vectors = np.zeros((1, item_vectors.shape[-1]), dtype=np.float32)
        return {
            "input_ids": self.input_ids,
            "token_kind": self.token_kind,
            "item_vectors": item_vectors,
            "item_index": self.item_index,
            "item_numeric": self.item_numeric,
            "profile_vector": self.profile_vector,
            "profile_slot": self.profile_slot,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "user_position": self.user_position,
        }


GRAPH_INPUT_NAMES = (
    "input_ids",
    "token_kind",
    "item_vectors",
    "item_index",
    "item_numeric",
    "profile_vector",
    "profile_slot",
    "attention_mask",
    "position_ids",
    "user_position",
)


class SequenceBuilder:
    """Builds `ModelInputs` from featurized users, instructions and (for training) answers."""

    def __init__(self, tokenizer, config: ModelConfig) -> None:
        """Args: tokenizer: the LLM's `tokenizers.Tokenizer` with the special tokens added."""
        self.tokenizer = tokenizer
        # Instructions and answers are free text (an instruction may come with a Feast request): a copy of the
        # tokenizer that reads "<USER>", "<|im_end|>" and the like in them as plain text, so no text can add
        # control tokens to the sequence.
        self.text_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.text_tokenizer.encode_special_tokens = True
        self.config = config
        self.user_id = self._token_id(USER_TOKEN)
        self.item_id = self._token_id(ITEM_TOKEN)
        delimiters = source_delimiters()
        self.open_ids = [self._token_id(o) for o, _ in delimiters]
        self.close_ids = [self._token_id(c) for _, c in delimiters]
        self.prefix = self._encode(PROMPT_PREFIX)
        self.suffix = self._encode(PROMPT_SUFFIX)
        self.answer_end = self._encode(ANSWER_END)
        self.pad_id = self.answer_end[-1]
        self._warned_truncation: set[str] = set()  # what (instructions, answers) was logged as cut

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the tokenizer; was it built by InstructUEModel?")
        return token_id

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_texts(
        self, texts: list[str], *, limit: int, what: str, end_if_whole: list[int] | None = None
    ) -> list[list[int]]:
        """Tokenize free texts (special tokens in them read as text), cutting each to `limit` tokens (logged once
        per builder and kind of text, `what`); `end_if_whole` is appended to each text that was not cut."""
        encoded = [e.ids for e in self.text_tokenizer.encode_batch(texts, add_special_tokens=False)] if texts else []
        if any(len(ids) > limit for ids in encoded) and what not in self._warned_truncation:
            self._warned_truncation.add(what)
            logger.warning("%s longer than %d tokens cut to %d tokens (the beginning is kept)", what, limit, limit)
        end = end_if_whole or []
        return [ids + end if len(ids) <= limit else ids[:limit] for ids in encoded]

    def build(
        self,
        users: list[UserBehaviour],
        instructions: list[str],
        answers: list[str] | None = None,
    ) -> ModelInputs:
        """Lay out a batch. `instructions[i]` may be "" (general embedding)."""
        if len(instructions) != len(users) or (answers is not None and len(answers) != len(users)):
            raise ValueError("users, instructions and answers must have the same length")
        instruction_ids = self.encode_texts(instructions, limit=self.config.max_instruction_tokens, what="instructions")
        # A cut answer gets no end token: the model must not learn to stop in mid-sentence.
        answer_ids = (
            self.encode_texts(
                answers, limit=self.config.max_answer_tokens, what="answers", end_if_whole=self.answer_end
            )
            if answers is not None
            else None
        )
        text_index: dict[str, int] = {}
        summary_groups: list[np.ndarray] = []
        rows = []
        for b, user in enumerate(users):
            ids: list[int] = list(self.prefix)
            kinds: list[int] = [TEXT_KIND] * len(ids)
            items: list[int] = [0] * len(ids)
            numeric: list[np.ndarray | None] = [None] * len(ids)
            slots: list[int] = [0] * len(ids)
            for k, source in enumerate(SEQUENCE_SOURCES, start=1):
                present = user.sources.get(source.name)
                if present is None or not present.texts:
                    continue
                ids.append(self.open_ids[k - 1])
                kinds.append(TEXT_KIND)
                items.append(0)
                numeric.append(None)
                slots.append(0)
                group = [text_index.setdefault(t, len(text_index)) for t in present.summary_texts]
                ids.append(self.item_id)
                kinds.append(k)
                items.append(-1 - len(summary_groups))  # resolved to U + group once U is known
                numeric.append(present.summary_numeric)
                slots.append(0)
                summary_groups.append(np.asarray(group, dtype=np.int64))
                for text, row in zip(present.texts, present.numeric, strict=True):
                    ids.append(self.item_id)
                    kinds.append(k)
                    items.append(text_index.setdefault(text, len(text_index)))
                    numeric.append(row)
                    slots.append(0)
                ids.append(self.close_ids[k - 1])
                kinds.append(TEXT_KIND)
                items.append(0)
                numeric.append(None)
                slots.append(0)
            if user.profile is not None:
                n = self.config.profile_tokens
                ids += [self.open_ids[-1]] + [self.item_id] * n + [self.close_ids[-1]]
                kinds += [TEXT_KIND] + [PROFILE_KIND] * n + [TEXT_KIND]
                items += [0] * (n + 2)
                numeric += [None] * (n + 2)
                slots += [0] + list(range(n)) + [0]
            tail = instruction_ids[b] + self.suffix + [self.user_id]
            ids += tail
            kinds += [TEXT_KIND] * len(tail)
            items += [0] * len(tail)
            numeric += [None] * len(tail)
            slots += [0] * len(tail)
            user_position = len(ids) - 1
            answer = answer_ids[b] if answer_ids is not None else []
            ids += answer
            kinds += [TEXT_KIND] * len(answer)
            items += [0] * len(answer)
            numeric += [None] * len(answer)
            slots += [0] * len(answer)
            rows.append((ids, kinds, items, numeric, slots, user_position, len(answer)))

        batch = len(users)
        length = max(len(r[0]) for r in rows)
        input_ids = np.full((batch, length), self.pad_id, dtype=np.int64)
        token_kind = np.zeros((batch, length), dtype=np.int64)
        item_index = np.zeros((batch, length), dtype=np.int64)
        item_numeric = np.zeros((batch, length, ITEM_NUMERIC_WIDTH), dtype=np.float32)
        profile_slot = np.zeros((batch, length), dtype=np.int64)
        attention_mask = np.zeros((batch, length), dtype=np.int64)
        user_position = np.zeros(batch, dtype=np.int64)
        labels = np.full((batch, length), IGNORE_INDEX, dtype=np.int64) if answers is not None else None
        profile_vector = np.zeros((batch, PROFILE.vector_width), dtype=np.float32)
        for b, (ids, kinds, items, numeric, slots, user_pos, n_answer) in enumerate(rows):
            n = len(ids)
            start = length - n if self.config.padding_side == "left" else 0
            span = slice(start, start + n)
            input_ids[b, span] = ids
            token_kind[b, span] = kinds
            item_index[b, span] = items
            profile_slot[b, span] = slots
            attention_mask[b, span] = 1
            for t, row in enumerate(numeric):
                if row is not None:
                    item_numeric[b, start + t] = row
            user_position[b] = start + user_pos
            if labels is not None and n_answer:
                # Position t predicts token t+1: <USER> predicts the first answer token.
                first = start + user_pos
                labels[b, first : first + n_answer] = ids[user_pos + 1 : user_pos + 1 + n_answer]
            if users[b].profile is not None:
                profile_vector[b] = users[b].profile
        position_ids = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None).astype(np.int64)
        summary_rows = item_index < 0
        item_index[summary_rows] = len(text_index) + (-1 - item_index[summary_rows])
        return ModelInputs(
            input_ids=input_ids,
            token_kind=token_kind,
            item_index=item_index,
            item_numeric=item_numeric,
            profile_vector=profile_vector,
            profile_slot=profile_slot,
            attention_mask=attention_mask,
            position_ids=position_ids,
            user_position=user_position,
            item_texts=list(text_index),
            summary_groups=summary_groups,
            labels=labels,
        )

    def build_answers(self, answers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask (right-padded) of answer texts for the answer tower; each ends with the end
        token, cut or not, as the tower reads the last token."""
        encoded = [
            ids + self.answer_end
            for ids in self.encode_texts(answers, limit=self.config.max_answer_tokens, what="answers")
        ]
        length = max(len(ids) for ids in encoded)
        input_ids = np.full((len(encoded), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), length), dtype=np.int64)
        for i, ids in enumerate(encoded):
            input_ids[i, : len(ids)] = ids
            mask[i, : len(ids)] = 1
        return input_ids, mask
