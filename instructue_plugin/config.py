"""The model's configuration and the named presets.

A preset is a named set of overrides of `ModelConfig`'s defaults. Shapes and sizes come from here only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ConfigError, CorruptModelError
from .schema import SEQUENCE_SOURCES

# Special tokens added to the LLM tokenizer: the read-out token, the soft-token placeholder, source delimiters.
USER_TOKEN = "<USER>"
ITEM_TOKEN = "<item>"
PROFILE_NAME = "profile"


def source_delimiters() -> list[tuple[str, str]]:
    """(open, close) delimiter tokens per source, sequence sources first, profile last."""
    names = [s.name for s in SEQUENCE_SOURCES] + [PROFILE_NAME]
    return [(f"<{n}>", f"</{n}>") for n in names]


def special_tokens() -> list[str]:
    """All special tokens the model adds to its LLM tokenizer, in a fixed order."""
    tokens = [USER_TOKEN, ITEM_TOKEN]
    for opening, closing in source_delimiters():
        tokens += [opening, closing]
    return tokens


class ModelConfig(BaseModel):
    """Everything needed to rebuild an InstructUE model (saved as `config.json` in a model folder)."""

    model_config = ConfigDict(extra="forbid")

    # Backbone: "tiny" (random init, real SmolLM2 tokenizer), "smollm2" (SmolLM2-135M-Instruct), "hf:<dir>".
    backbone: str = "smollm2"
    # Keep only the first N decoder layers (None: all). Truncation is how the CPU preset stays fast.
    num_layers: int | None = None
    # Sizes of the random-init backbone of the `tiny` preset (ignored otherwise).
    tiny_hidden_size: int = 64
    tiny_num_layers: int = 2
    # Item encoder: "minilm" (all-MiniLM-L6-v2, frozen) or "tiny" (random-init BERT with MiniLM's tokenizer).
    item_encoder: Literal["minilm", "tiny"] = "minilm"
    max_item_tokens: int = 32  # word pieces per item text; item texts are short identities
    # Soft tokens: newest items kept per source (compute grows linearly with it) and profile tokens.
    max_items_per_source: int = 12
    profile_tokens: int = 2
    # Text budgets; longer instructions are cut to this many tokens (logged), answers likewise.
    max_instruction_tokens: int = 32
    max_answer_tokens: int = 64  # the longest UserQA answers (general descriptions) take ~57 tokens
    # Read-out: `<USER>` hidden state -> projection head -> L2 norm.
    embedding_dim: int = 256
    # LoRA on attention and MLP projections.
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    padding_side: Literal["right", "left"] = "right"
    seed: int = 0

    @field_validator(
        "max_items_per_source",
        "profile_tokens",
        "max_item_tokens",
        "max_instruction_tokens",
        "max_answer_tokens",
        "embedding_dim",
    )
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in ("tiny", "smollm2") and not value.startswith("hf:"):
            raise ValueError(f"unknown backbone {value!r}: use 'tiny', 'smollm2' or 'hf:<dir>'")
        return value


PRESETS: dict[str, dict[str, Any]] = {
    # Tests: random-init 2-layer Llama, random tiny item encoder; seconds on a CPU.
    "tiny": {
        "backbone": "tiny",
        "item_encoder": "tiny",
        "embedding_dim": 32,
        "max_items_per_source": 6,
        "lora_r": 4,
        "lora_alpha": 8,
        "max_answer_tokens": 24,
    },
    # CPU demo: SmolLM2-135M-Instruct cut to its first 4 of 30 layers (~1/7 of the decoder FLOPs).
    "smol-cpu": {"backbone": "smollm2", "num_layers": 4, "max_items_per_source": 10},
    # The full model, for a GPU.
    "smol": {"backbone": "smollm2", "max_items_per_source": 16},
}


def config_for_preset(preset: str, **overrides: Any) -> ModelConfig:
    """Build the config of a preset (`tiny`, `smol-cpu`, `smol`, `hf:<dir>`) with extra overrides."""
    if preset.startswith("hf:"):
        values: dict[str, Any] = {"backbone": preset}
    elif preset in PRESETS:
        values = dict(PRESETS[preset])
    else:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)} or hf:<dir>")
    values.update(overrides)
    try:
        return ModelConfig(**values)
    except ValueError as error:
        raise ConfigError(f"invalid model configuration for preset {preset!r}: {error}") from error


def saved_model_config(values: Any, *, source: Any) -> ModelConfig:
    """The `ModelConfig` stored in a model folder's config or an export's manifest (`source`, for the message).

    Raises:
        CorruptModelError: the stored values are not a valid config (damaged, or written by another version).
    """
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as error:
        raise CorruptModelError(
            f"{source} holds an invalid model configuration (damaged, or written by another version of "
            f"instructue-feast?): {error}"
        ) from error
