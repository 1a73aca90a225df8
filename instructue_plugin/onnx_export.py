"""Export a trained model folder to ONNX: the folder described in `manifest.py`.

Steps: load the model twice (the *reference*, exactly as `TorchEmbedder` runs it, and the *export copy*: LoRA
merged into the backbone, eager attention, no KV cache, and an fp16-safe form for the RMSNorms whose inputs
overflow fp16 on real inputs), export the item encoder and the user-embedding graph (`InstructUEModel.forward`),
run the full ONNX checker, compare onnxruntime with the reference on random and on real inputs
(`example_inputs`; fail above `tolerance`), optionally add the int8 user graph (`onnx_int8`: smoothed MLP
activations, per-channel dynamic quantization), copy the tokenizers, precompute the catalog's item vectors with
the exported item encoder, and write the manifest last. Everything is written to a staging folder beside
`out_dir`, moved in place only when every check passed.

Exporters (DESIGN §6): "legacy" is `torch.onnx.export(dynamo=False)` (TorchScript tracing through
`inputs_embeds`): it passes parity, exports the 135M backbone in seconds where dynamo takes minutes on 2 cores,
and onnxruntime's quantizer takes its graphs as they are. "dynamo" (`torch.export` + onnxscript) also passes
parity and is the fallback: "auto" (the default) tries legacy and, should it fail to export or to match PyTorch,
logs why and uses dynamo.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from . import __version__, model_files_stamp
from .errors import ConfigError, InstructUEError
from .example_inputs import example_feature_rows, item_inputs, random_graph_inputs, real_graph_inputs
from .featurize import featurize
from .item_cache import CACHE_TEXTS_FILE, ItemVectorCache
from .logs import quiet_loggers
from .manifest import (
    EXPORT_FORMAT,
    ITEM_GRAPH_FILE,
    ITEM_OUTPUT,
    ITEM_TOKENIZER_FILE,
    LLM_TOKENIZER_FILE,
    MANIFEST_FILE,
    USER_GRAPH_FILE,
    USER_GRAPH_INT8_FILE,
    USER_OUTPUT,
    read_manifest,
    sha256_file,
    write_manifest,
)
from .onnx_int8 import (
    DEFAULT_KEEP_FP32,
    INT8_MIN_COSINE,
    OUTLIER_CHANNELS,
    OUTLIER_FRAGMENT,
    SMOOTHING_ALPHA,
    int8_parity,
    quantize_int8,
    recording_activation_peaks,
    smooth_activations,
    split_outlier_channels,
)
from .onnx_runtime import cpu_session
from .sequence import GRAPH_INPUT_NAMES

logger = logging.getLogger(__name__)

Exporter = Literal["auto", "legacy", "dynamo"]
LEGACY_OPSET = 17
DYNAMO_OPSET = 18
# Instructions of the real-input parity batches ("" is the general embedding).
PARITY_INSTRUCTIONS = (
    "Represent this user for predicting fund purchases in the next 30 days.",
    "",
    "Represent this user for predicting churn in the next 30 days.",
)
# Real feature rows used at most for parity and int8 calibration (in batches of 32).
MAX_PARITY_FEATURE_ROWS = 256
# Dimension names of the dynamic axes: users, positions, distinct item texts, item word pieces.
USER_AXES = {
    "input_ids": ("batch", "seq"),
    "token_kind": ("batch", "seq"),
    "item_vectors": ("items",),
    "item_index": ("batch", "seq"),
    "item_numeric": ("batch", "seq"),
    "profile_vector": ("batch",),
    "profile_slot": ("batch", "seq"),
    "attention_mask": ("batch", "seq"),
    "position_ids": ("batch", "seq"),
    "user_position": ("batch",),
}
ITEM_AXES = {"input_ids": ("texts", "tokens"), "attention_mask": ("texts", "tokens")}
# An RMSNorm whose input mean square exceeds this on the real parity inputs gets the fp16-safe form: 1/16 of
# fp16's largest finite value. SmolLM2-135M reaches ~1.1e6 from layer 12 on; its first 4 layers stay below 2e3.
FP16_RISK_MEAN_SQUARE = 65504 / 16


class ExportError(InstructUEError):
    """An export could not be written or did not pass its checks."""


class ExportParityError(ExportError):
    """The exported graph's outputs differ from PyTorch's by more than the tolerance."""


# ----- the two models: reference and export copy ------------------------------------------------------------


def _load_export_copy(model_dir: Path) -> Any:
    """The model prepared for tracing: LoRA merged into the backbone, eager attention, no KV cache."""
    from .model import InstructUEModel

    # Merging folds B·A·scale into the base weights and turns the LoRA branches off: the traced graph holds plain
    # merged projections, exactly what merge_and_unload() gives, while forward() keeps its structure.
    model = InstructUEModel.from_pretrained(model_dir).merge_lora()
    llm = model.llm.get_base_model()
    llm.set_attn_implementation("eager")  # sdpa's mask shortcuts depend on the traced example; eager does not
    llm.config.use_cache = False
    model.item_encoder.bert.set_attn_implementation("eager")
    return model.eval()


def fp16_safe_rms_norm(norm: Any, hidden_states: Any) -> Any:
    """RMSNorm computed on the row divided by its largest magnitude `m`: the same function, safe in fp16.

    x·rsqrt(mean(x²) + ε) = (x/m)·rsqrt(mean((x/m)²) + ε/m²). SmolLM2's residual stream carries values near
    2.3e4 from layer 12 on, so mean(x²) reaches ~1e6, past fp16's largest finite value (65,504): a TensorRT
    fp16 engine (or any fp16 copy of the graph) would divide by infinity there. mean((x/m)²) lies in [1/H, 1].
    """
    scale = hidden_states.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    scaled = hidden_states / scale
    variance = scaled.pow(2).mean(-1, keepdim=True)
    # pow(-0.5), not rsqrt: onnxruntime fuses Pow-ReduceMean-Add-Sqrt-Div into SimplifiedLayerNormalization
    # and then ignores an epsilon that is not a constant.
    return norm.weight * (scaled * (variance + norm.variance_epsilon / scale.pow(2)).pow(-0.5))


def _rms_norms(llm: Any) -> dict[str, Any]:
    return {
        name: module
        for name, module in llm.named_modules()
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
    }


def fp16_risky_rms_norms(llm: Any, run: Callable[[], object]) -> list[str]:
    """Names of the decoder's RMSNorms whose input mean square exceeds `FP16_RISK_MEAN_SQUARE` while `run` runs."""
    import torch

    peaks: dict[str, float] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: tuple, output: Any) -> None:
            peak = float(inputs[0].detach().float().pow(2).mean(-1).max())
            peaks[name] = max(peaks.get(name, 0.0), peak)

        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in _rms_norms(llm).items()]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return [name for name, peak in peaks.items() if peak > FP16_RISK_MEAN_SQUARE]


def make_rms_norms_fp16_safe(llm: Any, names: Sequence[str] | None = None) -> list[str]:
    """Make the named RMSNorms of a Hugging Face decoder (all when None) compute as `fp16_safe_rms_norm`.

    Only norms that need it should get it: it costs ~3 % of the CPU graph time for the 4-layer preset when
    applied to all, and onnxruntime's fused RMSNorm is no longer used for them.

    Returns:
        The names of the norms changed.
    """
    import types

    norms = _rms_norms(llm)
    chosen = list(norms) if names is None else list(names)
    for name in chosen:
        norms[name].forward = types.MethodType(fp16_safe_rms_norm, norms[name])
    return chosen


# ----- exporting one graph ----------------------------------------------------------------------------------


def _export_graph(
    module: Any,
    example: dict[str, np.ndarray],
    path: Path,
    *,
    axes: dict[str, tuple[str, ...]],
    output: str,
    exporter: Literal["legacy", "dynamo"],
    opset: int | None,
    max_sizes: dict[str, int],
    out_dim: int,
) -> None:
    """Export `module(**example)` -> (rows, out_dim) to `path` with the named dynamic axes."""
    import torch

    names = list(example)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in names)
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_800_000_000
    with warnings.catch_warnings(), torch.no_grad(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the checks below decide
        if exporter == "legacy":
            dynamic_axes: dict[str, dict[int, str]] = {n: dict(enumerate(axes[n])) for n in names}
            dynamic_axes[output] = {0: axes[names[0]][0]}
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_axes=dynamic_axes,
                opset_version=opset or LEGACY_OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        else:
            dims = {
                name: torch.export.Dim(name, min=1, max=max_sizes.get(name, 1 << 20))
                for name in {a for n in names for a in axes[n]}
            }
            dynamic_shapes = {n: {i: dims[a] for i, a in enumerate(axes[n])} for n in names}
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset or DYNAMO_OPSET,
                dynamo=True,
                external_data=large,
                verbose=False,
            )
    _consolidate_external_data(path)
    _name_output_shape(path, output, [axes[names[0]][0], out_dim])


def _name_output_shape(path: Path, output: str, dims: list[str | int]) -> None:
    """Write the output's shape as (batch name, size): the legacy tracer leaves the size as a made-up name."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    (value,) = [v for v in model.graph.output if v.name == output]
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        if isinstance(dim, str):
            shape.dim.add().dim_param = dim
        else:
            shape.dim.add().dim_value = dim
    onnx.save_model(model, str(path))


def _consolidate_external_data(path: Path) -> None:
    """Graphs over 2 GB keep their weights outside the protobuf: gather them into one `<graph>.data` file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if not external or external == {f"{path.name}.data"}:
        return
    model = onnx.load(str(path))
    for name in external:
        (path.parent / name).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")


def _check(path: Path) -> None:
    """The full ONNX checker (with shape inference); by path, so graphs over 2 GB work too."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:
        raise ExportError(f"{path.name} fails the ONNX checker: {error}") from error


def _signature(path: Path) -> dict[str, Any]:
    """Names, dtypes and shapes (dimension names for dynamic axes) of a graph's inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        return {
            "name": value.name,
            "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
            "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
        }

    return {
        "file": path.name,
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": [describe(v) for v in model.graph.input],
        "outputs": [describe(v) for v in model.graph.output],
    }


# ----- parity -----------------------------------------------------------------------------------------------


def _max_positions(model: Any) -> int:
    return int(model.llm.get_base_model().config.max_position_embeddings)


def _torch_run(module: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    tensors = {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in arrays.items()}
    with torch.inference_mode():
        return module(**tensors).float().numpy()


def _max_diff(session: Any, output: str, module: Any, cases: list[dict[str, np.ndarray]]) -> float:
    """Largest absolute difference between onnxruntime and PyTorch over `cases`: inf for a shape mismatch, NaN
    if either side gives a non-finite value (which no tolerance accepts)."""
    worst = 0.0
    for case in cases:
        got = session.run([output], {i.name: case[i.name] for i in session.get_inputs()})[0]
        want = _torch_run(module, case)
        if got.shape != want.shape:
            return math.inf
        if not (np.isfinite(got).all() and np.isfinite(want).all()):
            return math.nan
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def _parity_cases(reference: Any, catalog: list[str], parity_features: Any | None) -> tuple[list, list, list, list]:
    """(random user cases, real user cases, random item cases, real item texts) for the parity checks."""
    rows = example_feature_rows(
        6, seed=7, item_texts=catalog, missing={1: ["bill", "search"], 3: ["profile"], 4: ["app", "miniprogram"]}
    )
    real = [real_graph_inputs(reference, rows, [instruction] * 6) for instruction in PARITY_INSTRUCTIONS]
    real.append(real_graph_inputs(reference, rows, [PARITY_INSTRUCTIONS[i % 3] for i in range(6)]))
    single = {name: values[:1] for name, values in rows.items()}
    real.append(real_graph_inputs(reference, single, [PARITY_INSTRUCTIONS[0]]))
    if parity_features is not None:
        n = _feature_rows(parity_features)
        for start in range(0, n, 32):
            chunk = slice(start, min(start + 32, n))
            part = (
                {k: list(v)[chunk] for k, v in parity_features.items()}
                if isinstance(parity_features, dict)
                else parity_features.iloc[chunk]
            )
            instructions = [PARITY_INSTRUCTIONS[i % len(PARITY_INSTRUCTIONS)] for i in range(chunk.start, chunk.stop)]
            real.append(real_graph_inputs(reference, part, instructions))
    random_cases = [
        random_graph_inputs(reference, batch=3, length=21, items=7, seed=1),
        random_graph_inputs(reference, batch=2, length=47, items=2, seed=2),
    ]
    rng = np.random.default_rng(3)
    vocab = reference.item_tokenizer.get_vocab_size()
    random_items = []
    for n, t in ((5, 12), (3, 31)):
        mask = (np.arange(t)[None, :] < rng.integers(2, t + 1, size=n)[:, None]).astype(np.int64)
        mask[0] = 1
        random_items.append({"input_ids": rng.integers(0, vocab, size=(n, t)).astype(np.int64), "attention_mask": mask})
    users = featurize(rows, max_items_per_source=reference.config.max_items_per_source)
    texts = sorted({t for u in users for s in u.sources.values() for t in s.texts})
    return random_cases, real, random_items, texts


def _feature_rows(parity_features: Any | None) -> int:
    """How many of the given real feature rows the parity check and calibration use."""
    from .featurize import num_rows

    return 0 if parity_features is None else min(num_rows(parity_features), MAX_PARITY_FEATURE_ROWS)


def _catalog_texts(model_dir: Path) -> list[str]:
    """The item texts of a model folder's item cache (its catalog); empty when it has none."""
    path = model_dir / CACHE_TEXTS_FILE
    return json.loads(path.read_text()) if path.exists() else []


# ----- the export -------------------------------------------------------------------------------------------


def export_is_of(export_dir: str | Path, model_dir: str | Path) -> bool:
    """Whether `export_dir` holds an intact export (its manifest verifies) made from `model_dir`'s current
    weights (their sha256 matches)."""
    from .model import WEIGHTS_FILE

    weights = Path(model_dir) / WEIGHTS_FILE
    try:
        recorded = read_manifest(Path(export_dir)).get("source_model_sha256")
    except InstructUEError:  # missing, damaged, or of another schema or format
        return False
    return recorded is not None and weights.is_file() and recorded == sha256_file(weights)


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    int8: bool = False,
    int8_keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32,
    int8_outlier_channels: int = OUTLIER_CHANNELS,
    int8_min_cosine: float = INT8_MIN_COSINE,
    opset: int | None = None,
    exporter: Exporter = "auto",
    tolerance: float = 1e-4,
    parity_features: Any | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Export a trained model folder to an ONNX export folder (see `manifest.py`).

    Args:
        model_dir: a folder written by `InstructUEModel.save_pretrained` (e.g. by `instructue train`).
        out_dir: the export folder to write; replaced if it holds an earlier export, refused if it holds
            anything else.
        int8: also write `user_embedding.int8.onnx` (per-channel dynamic int8, for CPUs).
        int8_keep_fp32: projections the int8 variant keeps in fp32, by module name (e.g. "down_proj"): slower,
            closer to fp32 (default: the first layer's down projection; `()` quantizes all; see
            `onnx_int8.quantize_int8`).
        int8_outlier_channels: intermediate channels per decoder MLP the int8 variant computes in fp32: those with
            the largest activations (see `onnx_int8.split_outlier_channels`; 0 splits none).
        int8_min_cosine: the export fails if an int8 embedding's cosine to fp32 falls below this on the real
            parity inputs (0 accepts any int8 graph).
        opset: ONNX opset (default: 17 for the legacy exporter, 18 for dynamo).
        exporter: "legacy" (`dynamo=False`), "dynamo", or "auto" (legacy, falling back to dynamo, logged).
        tolerance: largest max-abs difference allowed between onnxruntime (fp32) and PyTorch.
        parity_features: optional real Feast rows (DataFrame or dict of lists; the first 256 are used) added to
            the parity check and to the int8 variant's calibration: rows of the users the model will serve make
            a closer int8 graph than the generated example rows alone.
        progress: called with a short message at each step (the CLI shows it).

    Returns:
        The export folder.

    Raises:
        ModelNotFoundError, CorruptModelError, SchemaMismatchError: the model folder cannot be loaded.
        ConfigError: an unknown exporter, a tolerance that is not positive.
        ExportError: `out_dir` holds something else or cannot be replaced, `model_dir` is an export folder, the
            weights changed while exporting, or a graph fails the ONNX checker.
        ExportParityError: onnxruntime's outputs differ from PyTorch's by more than `tolerance`, or the int8
            graph's from fp32's beyond `int8_min_cosine`.
    """
    from .model import WEIGHTS_FILE, InstructUEModel

    say = progress or (lambda message: logger.info("%s", message))
    if exporter not in get_args(Exporter):
        raise ConfigError(f"unknown exporter {exporter!r}: choose one of {', '.join(get_args(Exporter))}")
    if not tolerance > 0:
        raise ConfigError(f"the parity tolerance must be positive, got {tolerance}")
    model_dir, out_dir = Path(model_dir).expanduser(), Path(out_dir).expanduser()
    if _is_export_folder(model_dir):
        raise ExportError(f"{model_dir} is an export folder; pass the trained model folder (`instructue train --out`)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; --out names the export folder to write")
    if out_dir.exists() and any(out_dir.iterdir()) and not _is_export_folder(out_dir):
        raise ExportError(f"{out_dir} exists and is not an export folder; choose another --out or empty it")
    if out_dir.is_symlink() or out_dir.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise ExportError(f"{out_dir} is a link or holds the working directory; choose another --out")
    started = time.perf_counter()
    say(f"loading {model_dir}")
    stamp = model_files_stamp(model_dir)
    weights = model_dir / WEIGHTS_FILE
    weights_sha256 = sha256_file(weights) if weights.is_file() else None
    reference = InstructUEModel.from_pretrained(model_dir)  # as trained: unmerged LoRA, sdpa attention
    export_copy = _load_export_copy(model_dir)
    if model_files_stamp(model_dir) != stamp:  # rewritten or replaced: the hash above is not of what was loaded
        raise ExportError(f"{model_dir} changed while it was loaded (a training run saving?); retry")
    catalog = _catalog_texts(model_dir)
    random_users, real_users, random_items, item_texts = _parity_cases(reference, catalog, parity_features)
    backbone = export_copy.llm.get_base_model()
    # One pass over the real cases measures the RMSNorm inputs and, for int8, the activations smoothing needs.
    with recording_activation_peaks(export_copy) if int8 else contextlib.nullcontext({}) as activation_peaks:
        risky = fp16_risky_rms_norms(backbone, lambda: [_torch_run(export_copy, case) for case in real_users])
    fp16_safe_norms = make_rms_norms_fp16_safe(backbone, risky)
    if fp16_safe_norms:
        say(f"{len(fp16_safe_norms)} RMSNorms see activations that overflow fp16: exported in an fp16-safe form")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the export from a server running as another user
    try:
        with tempfile.TemporaryDirectory() as scratch:
            used, fallback_reason, parity = _export_both(
                export_copy,
                reference,
                staging,
                exporter=exporter,
                opset=opset,
                tolerance=tolerance,
                cases=(random_users, real_users, random_items, item_texts),
                say=say,
            )
            parity["user_embedding"]["real_feature_rows"] = _feature_rows(parity_features)
            if int8:
                say("smoothing activations and quantizing the user graph to int8 (per channel)")
                parity["user_embedding_int8"] = _export_int8(
                    export_copy,
                    staging,
                    Path(scratch),
                    exporter=used,
                    opset=opset,
                    cases=(random_users, real_users),
                    activation_peaks=activation_peaks,
                    keep_fp32=int8_keep_fp32,
                    outlier_channels=int8_outlier_channels,
                    min_cosine=int8_min_cosine,
                )
        say("copying tokenizers and precomputing the catalog's item vectors")
        shutil.copyfile(model_dir / LLM_TOKENIZER_FILE, staging / LLM_TOKENIZER_FILE)
        shutil.copyfile(model_dir / ITEM_TOKENIZER_FILE, staging / ITEM_TOKENIZER_FILE)
        parity["item_encoder"]["catalog"] = _write_item_cache(reference, catalog, staging)
        graphs = {
            "user_embedding": _signature(staging / USER_GRAPH_FILE),
            "item_encoder": _signature(staging / ITEM_GRAPH_FILE),
        }
        if int8:
            graphs["user_embedding_int8"] = _signature(staging / USER_GRAPH_INT8_FILE)
        write_manifest(
            staging,
            {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "source_model": str(model_dir.resolve()),
                "source_model_sha256": weights_sha256,  # of the weights loaded above
                "versions": _versions(),
                "model": reference.config.model_dump(),
                "llm_config": reference.llm_config,
                "item_encoder_config": reference.item_encoder_config,
                "base_vocab_size": reference.base_vocab_size,
                "embedding_dim": reference.config.embedding_dim,
                "item_dim": reference.item_cache.dim,
                "opset": graphs["user_embedding"]["opset"],
                "exporter": {
                    "name": used,
                    "call": f"torch.onnx.export(dynamo={used == 'dynamo'})",
                    "requested": exporter,
                    "fallback_reason": fallback_reason,
                    "lora": "merged into the backbone (peft merge_adapter)",
                    "attention": "eager",
                },
                "graphs": graphs,
                "fp16_safe_rms_norms": fp16_safe_norms,
                "parity": parity,
                "export_seconds": round(time.perf_counter() - started, 1),
            },
        )
        _replace_folder(out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"exported to {out_dir} in {time.perf_counter() - started:.0f} s")
    return out_dir


def _replace_folder(target: Path, new: Path) -> None:
    """Move `new` to `target`; an existing `target` is set aside first and restored if the move fails."""
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    try:
        target.rename(old)
    except OSError as error:  # e.g. a mount point: nothing was changed
        raise ExportError(f"cannot replace {target} ({error}); remove it or choose another --out") from error
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _is_export_folder(folder: Path) -> bool:
    """Whether `folder` holds an InstructUE export (its manifest says so), which a new export may replace."""
    return _unverified_manifest(folder).get("format") == EXPORT_FORMAT


def _unverified_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of `folder` as written, without the checks of `manifest.read_manifest`; {} if none is readable."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _export_int8(
    export_copy: Any,
    folder: Path,
    scratch: Path,
    *,
    exporter: Literal["legacy", "dynamo"],
    opset: int | None,
    cases: tuple[list, list],
    activation_peaks: dict,
    keep_fp32: Sequence[str],
    outlier_channels: int,
    min_cosine: float,
) -> dict[str, Any]:
    """Smooth the export copy and split off its MLPs' outlier channels (in place, with the peaks recorded on the
    real cases), export it again and quantize it into `folder`, the outlier projections kept fp32; returns its
    parity."""
    random_users, real_users = cases
    smoothed = smooth_activations(export_copy, activation_peaks, alpha=SMOOTHING_ALPHA)
    split = split_outlier_channels(export_copy, activation_peaks, channels=outlier_channels, keep_fp32=keep_fp32)
    _export_graph(
        export_copy,
        {name: real_users[0][name] for name in GRAPH_INPUT_NAMES},
        scratch / USER_GRAPH_FILE,
        axes=USER_AXES,
        output=USER_OUTPUT,
        exporter=exporter,
        opset=opset,
        max_sizes={"seq": _max_positions(export_copy)},
        out_dim=export_copy.config.embedding_dim,
    )
    kept = quantize_int8(
        scratch / USER_GRAPH_FILE,
        folder / USER_GRAPH_INT8_FILE,
        scratch,
        keep_fp32=keep_fp32,
        always_fp32=(OUTLIER_FRAGMENT,) if split else (),
    )
    if split and not any(OUTLIER_FRAGMENT in node for node in kept["kept_fp32_nodes"]):
        raise ExportError(
            f"the {exporter} exporter's graph does not name its matmuls after the model's modules, so the int8 "
            "variant cannot keep the outlier channels' projections in fp32: export with the legacy exporter, or "
            "with --int8-outlier-channels 0"
        )
    _check(folder / USER_GRAPH_INT8_FILE)
    parity = int8_parity(folder, random_users, real_users)
    if not parity["real_min_cosine"] >= min_cosine:  # also a NaN
        raise ExportParityError(
            f"the int8 graph's embeddings reach a cosine of only {parity['real_min_cosine']:.4f} to fp32 on the real "
            f"inputs (at least {min_cosine:g} asked); nothing is written. Keep more projections in fp32 "
            "(--int8-keep-fp32 down_proj), split more outlier channels, or export without --int8"
        )
    return parity | {
        "smoothed": smoothed,
        "smoothing_alpha": SMOOTHING_ALPHA,
        "outlier_channels": {"per_mlp": outlier_channels if split else 0, "mlps_split": split},
        "matmuls": kept | {"kept_fp32_requested": list(keep_fp32)},
    }


def _export_both(
    export_copy: Any,
    reference: Any,
    folder: Path,
    *,
    exporter: Exporter,
    opset: int | None,
    tolerance: float,
    cases: tuple[list, list, list, list],
    say: Callable[[str], None],
) -> tuple[str, str | None, dict[str, Any]]:
    """Export and check both graphs with one exporter, or (auto) legacy then dynamo; (used, fallback reason, parity)."""
    order: list[Literal["legacy", "dynamo"]] = ["legacy", "dynamo"] if exporter == "auto" else [exporter]
    reason = None
    for attempt, name in enumerate(order):
        try:
            return name, reason, _export_checked(export_copy, reference, folder, name, opset, tolerance, cases, say)
        except Exception as error:
            if attempt + 1 == len(order):
                if isinstance(error, InstructUEError):
                    raise
                earlier = f" after the {reason}" if reason else ""
                raise ExportError(
                    f"the {name} exporter failed ({type(error).__name__}: {str(error)[:300]}){earlier}"
                ) from error
            reason = f"{name} exporter failed ({type(error).__name__}: {str(error)[:300]})"
            logger.warning("%s; falling back to the %s exporter", reason, order[attempt + 1])
            for path in folder.iterdir():
                path.unlink()
    raise AssertionError("unreachable")


def _export_checked(
    export_copy: Any,
    reference: Any,
    folder: Path,
    exporter: Literal["legacy", "dynamo"],
    opset: int | None,
    tolerance: float,
    cases: tuple[list, list, list, list],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Export both graphs with `exporter`, run the checker and the parity checks; returns the parity figures."""
    random_users, real_users, random_items, item_texts = cases
    max_positions = _max_positions(export_copy)
    bert_positions = int(export_copy.item_encoder.bert.config.max_position_embeddings)
    say(f"exporting the item encoder ({exporter})")
    item_example = item_inputs(reference, item_texts[:8] + ["a", "b"])
    _export_graph(
        export_copy.item_encoder,
        item_example,
        folder / ITEM_GRAPH_FILE,
        axes=ITEM_AXES,
        output=ITEM_OUTPUT,
        exporter=exporter,
        opset=opset,
        max_sizes={"tokens": bert_positions},
        out_dim=reference.item_cache.dim,
    )
    say(f"exporting the user-embedding graph ({exporter})")
    _export_graph(
        export_copy,
        {name: real_users[0][name] for name in GRAPH_INPUT_NAMES},
        folder / USER_GRAPH_FILE,
        axes=USER_AXES,
        output=USER_OUTPUT,
        exporter=exporter,
        opset=opset,
        max_sizes={"seq": max_positions},
        out_dim=reference.config.embedding_dim,
    )
    say("running the ONNX checker")
    _check(folder / ITEM_GRAPH_FILE)
    _check(folder / USER_GRAPH_FILE)
    say("checking onnxruntime against PyTorch")
    item_session = cpu_session(folder / ITEM_GRAPH_FILE)
    user_session = cpu_session(folder / USER_GRAPH_FILE)
    real_items = [item_inputs(reference, item_texts[i : i + 64]) for i in range(0, len(item_texts), 64)]
    parity = {
        "tolerance": tolerance,
        "reference": "PyTorch as trained (LoRA unmerged, sdpa attention), fp32 CPU",
        "user_embedding": {
            "random_max_abs_diff": _max_diff(user_session, USER_OUTPUT, reference, random_users),
            "real_max_abs_diff": _max_diff(user_session, USER_OUTPUT, reference, real_users),
            "random_batches": len(random_users),
            "real_batches": len(real_users),
        },
        "item_encoder": {
            "random_max_abs_diff": _max_diff(item_session, ITEM_OUTPUT, reference.item_encoder, random_items),
            "real_max_abs_diff": _max_diff(item_session, ITEM_OUTPUT, reference.item_encoder, real_items),
        },
    }
    for graph in ("user_embedding", "item_encoder"):
        diffs = (parity[graph]["random_max_abs_diff"], parity[graph]["real_max_abs_diff"])
        worst = math.nan if any(math.isnan(d) for d in diffs) else max(diffs)
        if not worst <= tolerance:  # also catches NaN
            raise ExportParityError(
                f"{graph} ({exporter} exporter): onnxruntime differs from PyTorch by {worst:.3g} > {tolerance:g} "
                f"(max abs); the graph is not written. Try the other exporter (--exporter) or a looser --tolerance"
            )
    return parity


def _write_item_cache(reference: Any, texts: list[str], folder: Path) -> dict[str, Any]:
    """Encode the model's catalog (its item cache's texts) with the exported item encoder into `folder`."""
    session = cpu_session(folder / ITEM_GRAPH_FILE)
    cache = ItemVectorCache(dim=reference.item_cache.dim)
    worst = 0.0
    for start in range(0, len(texts), 1024):
        chunk = texts[start : start + 1024]
        vectors = session.run([ITEM_OUTPUT], item_inputs(reference, chunk))[0]
        worst = max(worst, float(np.abs(vectors - reference.item_vectors(chunk)).max()))
        cache.add(chunk, vectors)
    cache.save(folder)
    return {"texts": len(texts), "max_abs_diff_to_model_cache": worst}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import peft
    import torch
    import transformers

    return {
        "instructue": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
