"""The InstructUE model: item encoder -> per-source adapters -> LLM (with LoRA) -> `<USER>` read-out -> head.

Reading order: the item encoder, the model's parts, the sequence embedding (soft tokens placed among text
tokens), the two towers (user and answer), the language-model logits for the answers, then save and load.
A saved model is a folder: `config.json`, `model.safetensors`, `llm_tokenizer.json`, `item_tokenizer.json`
and, when built, the item-vector cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from . import EXPORT_MANIFEST, __version__
from .backbones import (
    build_item_encoder,
    build_llm,
    llm_config_dict,
    load_item_encoder,
    load_llm_tokenizer,
    load_pretrained_llm,
    ready_item_tokenizer,
)
from .config import ModelConfig, saved_model_config, special_tokens
from .errors import ConfigError, CorruptModelError, DataValidationError, ModelNotFoundError, SchemaMismatchError
from .item_cache import ItemVectorCache
from .schema import ITEM_NUMERIC_WIDTH, PROFILE, SCHEMA_HASH, SEQUENCE_SOURCES
from .sequence import IGNORE_INDEX, PROFILE_KIND, ModelInputs, SequenceBuilder

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LLM_TOKENIZER_FILE = "llm_tokenizer.json"
ITEM_TOKENIZER_FILE = "item_tokenizer.json"


class ItemEncoder(nn.Module):
    """A BERT sentence encoder: mean pooling over word pieces, then L2 norm (as all-MiniLM-L6-v2)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (N, D)
        return F.normalize(pooled, dim=-1)


class InstructUEModel(nn.Module):
    """Instruction-aware user embeddings from an LLM (see DESIGN §1)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        llm: nn.Module,
        item_bert: nn.Module,
        llm_tokenizer: Any,
        item_tokenizer: Any,
        base_vocab_size: int,
    ) -> None:
        """Assemble a model from its parts; use `create` (pretrained) or `from_pretrained` (saved folder)."""
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.config = config
        self.llm_tokenizer = llm_tokenizer
        self.item_tokenizer = item_tokenizer
        self.base_vocab_size = base_vocab_size  # ids >= this are InstructUE's special tokens
        self.llm_config = llm_config_dict(llm)
        self.item_encoder_config = item_bert.config.to_diff_dict()
        hidden = llm.config.hidden_size
        item_dim = item_bert.config.hidden_size

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            bias="none",
        )
        torch.manual_seed(config.seed)  # LoRA's A matrices, the special tokens and the adapters start from it
        self.llm = get_peft_model(llm, lora)
        # The decoder's final norm is trained too (576 weights for SmolLM2): a truncated backbone's last hidden
        # states come from an early layer and need re-scaling before the tied LM head.
        self.llm.get_base_model().get_decoder().norm.requires_grad_(True)
        self.item_encoder = ItemEncoder(item_bert)
        self.item_encoder.requires_grad_(False)
        ready_item_tokenizer(item_tokenizer, config)

        base_embeddings = self.llm.get_input_embeddings().weight.detach()
        emb_std = float(base_embeddings.std())
        n_special = len(special_tokens())
        self.special_embeddings = nn.Embedding(n_special, hidden)
        with torch.no_grad():
            self.special_embeddings.weight.copy_(base_embeddings.mean(0) + emb_std * torch.randn(n_special, hidden))
        # One adapter per sequence source: [item vector, numeric features] -> one soft token.
        self.adapters = nn.ModuleList(nn.Linear(item_dim + ITEM_NUMERIC_WIDTH, hidden) for _ in SEQUENCE_SOURCES)
        self.profile_adapter = nn.Linear(PROFILE.vector_width, config.profile_tokens * hidden)
        self.head = nn.Linear(hidden, config.embedding_dim)
        for layer in [*self.adapters, self.profile_adapter]:
            # Unit-norm item vectors times N(0, std) weights give soft tokens on the token-embedding scale.
            nn.init.normal_(layer.weight, std=emb_std)
            nn.init.zeros_(layer.bias)
        self.builder = SequenceBuilder(llm_tokenizer, config)
        self.item_cache = ItemVectorCache(dim=item_dim)
        # `forward` hooks a shared layer for the call (`_last_mlp_at`) and `answer` runs that layer too: whoever
        # calls them from several threads holds this lock, as every `TorchEmbedder` of this model does.
        self.run_lock = threading.RLock()

    # ----- construction -----------------------------------------------------------------------------

    @classmethod
    def create(cls, config: ModelConfig) -> InstructUEModel:
        """A fresh model from the pretrained backbone and item encoder named by `config` (for training)."""
        llm = load_pretrained_llm(config)
        tokenizer = load_llm_tokenizer(config)
        base_vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        from tokenizers import AddedToken

        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
        item_bert, item_tokenizer = load_item_encoder(config)
        return cls(
            config,
            llm=llm,
            item_bert=item_bert,
            llm_tokenizer=tokenizer,
            item_tokenizer=item_tokenizer,
            base_vocab_size=base_vocab_size,
        )

    # ----- item encoder ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_items(self, texts: list[str], *, batch_size: int = 256) -> np.ndarray:
        """Encode item texts directly (no cache): (N, D) float32, L2-normalized."""
        vectors = []
        for start in range(0, len(texts), batch_size):
            encoded = self.item_tokenizer.encode_batch(texts[start : start + batch_size])
            ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
            mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)
            vectors.append(self.item_encoder(ids, mask).float().numpy())
        if not vectors:
            return np.zeros((0, self.item_cache.dim), dtype=np.float32)
        return np.concatenate(vectors)

    def item_vectors(self, texts: list[str]) -> np.ndarray:
        """Vectors of item texts through the cache: each distinct text is encoded once."""
        return self.item_cache.lookup(texts, self.encode_items)

    # ----- sequence embedding ------------------------------------------------------------------------

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, H): base vocabulary from the LLM, special tokens from their own table."""
        is_special = input_ids >= self.base_vocab_size
        base = self.llm.get_input_embeddings()(input_ids.clamp(max=self.base_vocab_size - 1))
        special = self.special_embeddings((input_ids - self.base_vocab_size).clamp(min=0))
        return torch.where(is_special.unsqueeze(-1), special, base)

    def sequence_embeddings(
        self,
        input_ids: torch.Tensor,  # (B, L)
        token_kind: torch.Tensor,  # (B, L)
        item_vectors: torch.Tensor,  # (U, D)
        item_index: torch.Tensor,  # (B, L)
        item_numeric: torch.Tensor,  # (B, L, W)
        profile_vector: torch.Tensor,  # (B, P)
        profile_slot: torch.Tensor,  # (B, L)
    ) -> torch.Tensor:
        """Input embeddings (B, L, H) with soft tokens in place of the <item> placeholders."""
        embeds = self.token_embeddings(input_ids)
        is_item = (token_kind >= 1) & (token_kind <= len(self.adapters))
        soft = self.soft_tokens(token_kind, item_vectors, item_index, item_numeric)
        embeds = torch.where(is_item.unsqueeze(-1), soft, embeds)
        batch, hidden = profile_vector.shape[0], embeds.shape[-1]
        profile_tokens = self.profile_adapter(profile_vector).view(batch, self.config.profile_tokens, hidden)
        placed = torch.gather(profile_tokens, 1, profile_slot.unsqueeze(-1).expand(-1, -1, hidden))  # (B, L, H)
        return torch.where((token_kind == PROFILE_KIND).unsqueeze(-1), placed, embeds)

    def soft_tokens(
        self,
        token_kind: torch.Tensor,  # (B, L)
        item_vectors: torch.Tensor,  # (U, D)
        item_index: torch.Tensor,  # (B, L)
        item_numeric: torch.Tensor,  # (B, L, W)
    ) -> torch.Tensor:
        """Every position through its own source's adapter, (B, L, H); only soft-token positions are used.

        adapter_s([v, n]) = W_s,v·v + W_s,n·n + b_s. The item-vector part is computed once per row of the item
        table and source, (U, S·H), and gathered per position, rather than running all S adapters over all B·L
        positions (~8% of smol-cpu's FLOPs, mostly wasted); the numeric part and the bias go through one small
        matmul over the source's one-hot. U (distinct texts of the batch) is usually far below B·L.
        """
        # Sizes from the modules, not the tensors: static sizes let the exporter fold the weight slices.
        n_sources, item_dim = len(self.adapters), self.adapters[0].in_features - ITEM_NUMERIC_WIDTH
        weight = torch.cat([adapter.weight for adapter in self.adapters])  # (S·H, D + W)
        hidden = weight.shape[0] // n_sources
        table = (item_vectors @ weight[:, :item_dim].T).reshape(-1, hidden)  # (U·S, H): row u·S + s
        source = (token_kind - 1).clamp(0, n_sources - 1)  # (B, L)
        from_items = table[item_index * n_sources + source]  # (B, L, H)
        one_hot = (source.unsqueeze(-1) == torch.arange(n_sources, device=source.device)).to(item_numeric.dtype)
        features = torch.cat([one_hot, (one_hot.unsqueeze(-1) * item_numeric.unsqueeze(-2)).flatten(2)], -1)
        small = torch.cat(
            [
                torch.stack([adapter.bias for adapter in self.adapters]),  # (S, H): row s
                torch.stack([adapter.weight[:, item_dim:].T for adapter in self.adapters]).flatten(0, 1),  # s·W + w
            ]
        )  # (S + S·W, H)
        return from_items + features @ small  # features: (B, L, S + S·W)

    def hidden_states(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Last-layer hidden states (B, L, H) of the LLM's decoder."""
        decoder = self.llm.get_base_model().get_decoder()
        out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Projection head and L2 norm: (N, H) -> (N, E)."""
        return F.normalize(self.head(hidden), dim=-1)

    @contextlib.contextmanager
    def _last_mlp_at(self, rows: torch.Tensor) -> Iterator[None]:
        """While active, the decoder's last MLP reads only row `rows[b]` of each sequence b.

        The last layer's post-attention norm hands the MLP (B, 1, H) instead of (B, L, H); the residual sum that
        follows broadcasts, so the last hidden states are exact at those rows only (the only ones read).
        """
        norm = self.llm.get_base_model().get_decoder().layers[-1].post_attention_layernorm

        def keep_rows(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return output[torch.arange(output.shape[0]), rows].unsqueeze(1)

        handle = norm.register_forward_hook(keep_rows)
        try:
            yield
        finally:
            handle.remove()

    # ----- the two towers ----------------------------------------------------------------------------

    def user_hidden(
        self,
        input_ids: torch.Tensor,
        token_kind: torch.Tensor,
        item_vectors: torch.Tensor,
        item_index: torch.Tensor,
        item_numeric: torch.Tensor,
        profile_vector: torch.Tensor,
        profile_slot: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states (B, L, H) of user sequences."""
        embeds = self.sequence_embeddings(
            input_ids, token_kind, item_vectors, item_index, item_numeric, profile_vector, profile_slot
        )
        return self.hidden_states(embeds, attention_mask, position_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_kind: torch.Tensor,
        item_vectors: torch.Tensor,
        item_index: torch.Tensor,
        item_numeric: torch.Tensor,
        profile_vector: torch.Tensor,
        profile_slot: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        user_position: torch.Tensor,
    ) -> torch.Tensor:
        """The user-embedding graph (what ONNX export traces): (B, E) L2-normalized embeddings.

        Only the `<USER>` row of the last layer is read, so that layer's MLP runs on that row alone
        (`_last_mlp_at`): the same embeddings, ~19 % fewer decoder FLOPs for the 4-layer preset. Not
        re-entrant (a hook on a shared module): callers serialize calls with `run_lock`, as `TorchEmbedder` does.
        """
        with self._last_mlp_at(user_position):
            hidden = self.user_hidden(
                input_ids,
                token_kind,
                item_vectors,
                item_index,
                item_numeric,
                profile_vector,
                profile_slot,
                attention_mask,
                position_ids,
            )
        at_user = hidden[torch.arange(hidden.shape[0]), user_position]  # (B, H)
        return self.project(at_user)

    def answer_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer tower: last-token pooling of right-padded answer texts through the same LLM and head."""
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        hidden = self.hidden_states(self.token_embeddings(input_ids), attention_mask, position_ids)
        last = attention_mask.sum(1) - 1  # (B,)
        return self.project(hidden[torch.arange(hidden.shape[0]), last])

    def answer_logits(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LM logits only where an answer token is the target: ((N, V) logits, (N,) targets)."""
        keep = labels != IGNORE_INDEX
        logits = self.llm.get_base_model().get_output_embeddings()(hidden[keep])
        return logits, labels[keep]

    def tensors(self, inputs: ModelInputs) -> dict[str, torch.Tensor]:
        """The user graph's inputs as tensors (item vectors looked up through the cache)."""
        arrays = inputs.graph_inputs(self.item_vectors(inputs.item_texts))
        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}

    # ----- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def answer(self, features_row: Any, question: str, *, max_new_tokens: int = 40) -> str:
        """Describe a user in words: greedy generation after `<USER>` given one feature row and a question.

        Raises:
            DataValidationError: the row has no data at all (where `embed` gives a NaN row).
            ConfigError: `max_new_tokens` below 1.
        """
        from .featurize import featurize

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        users = featurize(features_row, max_items_per_source=self.config.max_items_per_source)
        if len(users) != 1:
            raise ValueError(f"answer() takes one feature row, got {len(users)}")
        if users[0].is_empty:
            raise DataValidationError("the row has no data (an unknown user?): there is nothing to describe")
        inputs = self.builder.build(users, [question])
        t = self.tensors(inputs)
        user_position = t.pop("user_position")
        embeds = self.sequence_embeddings(
            t["input_ids"],
            t["token_kind"],
            t["item_vectors"],
            t["item_index"],
            t["item_numeric"],
            t["profile_vector"],
            t["profile_slot"],
        )[:, : int(user_position[0]) + 1]
        end_id = self.builder.answer_end[-1]
        generated = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=end_id,
            pad_token_id=self.builder.pad_id,
        )
        tokens = [int(i) for i in generated[0] if int(i) != end_id and int(i) < self.base_vocab_size]
        return self.llm_tokenizer.decode(tokens, skip_special_tokens=True).strip()

    # ----- inference form, save and load ------------------------------------------------------------------

    def merge_lora(self) -> InstructUEModel:
        """Fold LoRA into the backbone's weights for inference (peft `merge_adapter`); returns the model.

        The same function (up to float rounding) without the adapters' extra matmuls. A merged model is for
        serving and export only: `save_pretrained` refuses it (its weights would apply LoRA twice on reload).
        """
        self.llm.merge_adapter()
        return self

    @property
    def lora_merged(self) -> bool:
        """Whether `merge_lora` folded the adapters into the backbone."""
        return any(getattr(module, "merged", False) for module in self.llm.modules())

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the model as a self-describing folder (config, safetensors, tokenizers, item cache).

        Raises:
            ConfigError: the model's LoRA is merged (`merge_lora`): save the model before merging.
        """
        import peft
        import transformers

        if self.lora_merged:
            raise ConfigError(
                "this model's LoRA is merged into the backbone for inference; save it before merge_lora()"
            )

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": "instructue-model",
            "schema_hash": SCHEMA_HASH,
            "model": self.config.model_dump(),
            "llm_config": self.llm_config,
            "item_encoder_config": self.item_encoder_config,
            "base_vocab_size": self.base_vocab_size,
            "special_tokens": special_tokens(),
            "versions": {
                "instructue": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
        }
        save_model(self, str(folder / WEIGHTS_FILE))
        self.llm_tokenizer.save(str(folder / LLM_TOKENIZER_FILE))
        self.item_tokenizer.save(str(folder / ITEM_TOKENIZER_FILE))
        self.item_cache.save(folder)
        (folder / CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        # safetensors writes its file owner-only (0600): a server running as another user could not load it.
        shutil.copymode(folder / CONFIG_FILE, folder / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> InstructUEModel:
        """Load a folder written by `save_pretrained`; refuses another schema or a damaged folder."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        payload = read_model_config(folder)
        config = saved_model_config(payload.get("model"), source=folder / CONFIG_FILE)
        try:
            llm_tokenizer = Tokenizer.from_file(str(folder / LLM_TOKENIZER_FILE))
            item_tokenizer = Tokenizer.from_file(str(folder / ITEM_TOKENIZER_FILE))
        except Exception as error:
            raise CorruptModelError(f"{folder}: cannot read the tokenizer files ({error})") from error
        model = cls(
            config,
            llm=build_llm(payload["llm_config"], seed=config.seed),
            item_bert=build_item_encoder(payload["item_encoder_config"], seed=config.seed),
            llm_tokenizer=llm_tokenizer,
            item_tokenizer=item_tokenizer,
            base_vocab_size=payload["base_vocab_size"],
        )
        try:
            load_model(model, str(folder / WEIGHTS_FILE), strict=True)
        except Exception as error:
            raise CorruptModelError(
                f"{folder / WEIGHTS_FILE} cannot be loaded ({type(error).__name__}: {str(error)[:200]}); "
                "retrain or copy the folder again"
            ) from error
        model.item_cache = ItemVectorCache.load(folder, dim=model.item_cache.dim)
        return model.eval()


def read_model_config(folder: Path) -> dict[str, Any]:
    """The `config.json` of a model folder, checked for presence, format and schema hash."""
    config_path = folder / CONFIG_FILE
    if not folder.exists():
        raise ModelNotFoundError(f"no model at {folder}; train one with `instructue train` or set INSTRUCTUE_MODEL")
    if (folder / EXPORT_MANIFEST).exists() and not (folder / WEIGHTS_FILE).exists():
        raise ConfigError(
            f"{folder} is an ONNX export: it embeds (instructue_plugin.load) but holds no PyTorch model; pass the "
            "trained model folder it was exported from (answering and training need its weights and LM head)"
        )
    if not config_path.exists() or not (folder / WEIGHTS_FILE).exists():
        raise CorruptModelError(
            f"{folder} is not a complete InstructUE model folder ({CONFIG_FILE} or {WEIGHTS_FILE} missing)"
        )
    try:
        payload = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CorruptModelError(f"{config_path} is not valid JSON: {error}") from error
    if payload.get("format") != "instructue-model":
        raise CorruptModelError(f"{config_path} does not describe an InstructUE model")
    if payload.get("schema_hash") != SCHEMA_HASH:
        raise SchemaMismatchError(
            f"{folder} was trained with feature schema {payload.get('schema_hash')} but this installation has "
            f"{SCHEMA_HASH}; retrain the model on data with the current feature definitions"
        )
    return payload
