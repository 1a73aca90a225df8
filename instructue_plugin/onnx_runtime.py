"""Embed users with onnxruntime from an export folder (see `manifest.py`); imports neither torch nor transformers.

`OnnxEmbedder.from_export(folder)` verifies the manifest (schema hash, every file's sha256), then opens one
onnxruntime session per graph per process (shared by the embedders of that export while any holds it).
Providers, by preference:

1. TensorRT, fp16, with engine and timing caches next to the export (a folder per graph digest) and one
   optimization profile (min/opt/max batch, sequence and item-table sizes taken from the model config; larger
   batches run in parts);
2. CUDA;
3. CPU (intra-op threads = the CPUs this process may use, all graph optimizations).

The `onnxruntime-gpu` wheel lists TensorRT and CUDA as *available* even on a machine without a GPU, so the plan
asks the NVIDIA driver whether a GPU is visible, and the embedder reports the providers the sessions really
got (`session.get_providers()`). Without a GPU it runs on CPU and logs one warning saying why.

Thread safety: onnxruntime sessions may be `run` from several threads at once; the item-vector cache is locked;
the session table is guarded by a lock, and each session is built once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .backbones import ready_item_tokenizer
from .config import ModelConfig, saved_model_config
from .embedder import Embedder
from .errors import ConfigError
from .item_cache import ItemVectorCache
from .manifest import (
    ITEM_GRAPH_FILE,
    ITEM_OUTPUT,
    ITEM_TOKENIZER_FILE,
    LLM_TOKENIZER_FILE,
    MANIFEST_FILE,
    USER_OUTPUT,
    VARIANTS,
    read_manifest,
)
from .schema import ITEM_NUMERIC_WIDTH, PROFILE, SEQUENCE_SOURCES
from .sequence import SequenceBuilder

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

# Largest batches a TensorRT optimization profile covers; larger calls run in parts (every provider, for simplicity).
MAX_USERS_PER_RUN = 128
MAX_ITEMS_PER_RUN = 1024

ProviderSpec = str | tuple[str, dict[str, Any]]


# ----- environment: CPU threads, GPU, TensorRT --------------------------------------------------------------


def cpu_threads() -> int:
    """CPUs this process may run on (its affinity mask, so containers and `taskset` are respected)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def gpu_status() -> tuple[bool, str]:
    """Whether the NVIDIA driver sees a GPU, with the reason in words.

    Asks the driver (`libcuda`) directly: `ort.get_available_providers()` lists TensorRT and CUDA for the GPU
    wheel on any machine, so it cannot tell.
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver on this machine (libcuda.so.1 cannot be loaded)"
    status = libcuda.cuInit(0)
    if status != 0:
        return False, f"the NVIDIA driver cannot start (cuInit returned error {status}: no usable GPU)"
    count = ctypes.c_int(0)
    status = libcuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value < 1:
        return False, "the NVIDIA driver sees no GPU"
    return True, f"the NVIDIA driver sees {count.value} GPU(s)"


@functools.cache
def load_tensorrt() -> str | None:
    """Load TensorRT's libraries into the process (onnxruntime does not preload them).

    Returns:
        None when TensorRT is loaded, else why it cannot be used.
    """
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt  # noqa: F401  (its import loads libnvinfer, which onnxruntime then finds)
        except Exception as error:  # a broken install must not stop the CUDA/CPU fallback
            return f"the tensorrt package fails to import ({type(error).__name__}: {error})"
        return None
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return "TensorRT is not installed (pip install 'instructue-feast[tensorrt]' adds tensorrt-cu13)"
    return None


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* pip packages when present (a no-op otherwise)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its failures; we report providers instead
            ort.preload_dlls()
    except Exception as error:
        logger.debug("onnxruntime.preload_dlls failed: %s", error)


# ----- sessions ---------------------------------------------------------------------------------------------


def user_graph_shapes(
    config: ModelConfig, builder: SequenceBuilder, *, item_dim: int, max_users: int
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of the user graph's inputs for a TensorRT profile, from the config's size limits."""
    fixed = len(builder.prefix) + len(builder.suffix) + 1  # + <USER>
    sources = len(SEQUENCE_SOURCES)
    profile = config.profile_tokens + 2  # + open/close delimiters
    per_source = config.max_items_per_source + 3  # newest items + summary token + open/close delimiters
    longest = fixed + sources * per_source + profile + config.max_instruction_tokens
    typical = min(longest, fixed + sources * per_source + profile + 16)  # full histories, a short instruction
    batch = (1, min(32, max_users), max_users)
    seq = (1, typical, longest)
    # The item table holds every distinct stored item of the batch (summaries average all of them) plus one
    # summary row per user and source: snapshot rows keep up to `max_items` per source; allow twice that.
    stored = sum(2 * source.max_items + 1 for source in SEQUENCE_SOURCES)
    items = (1, batch[1] * stored // 8, max_users * stored)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
    for name in ("input_ids", "token_kind", "item_index", "profile_slot", "attention_mask", "position_ids"):
        shapes[name] = tuple((b, s) for b, s in zip(batch, seq, strict=True))
    shapes["item_vectors"] = tuple((u, item_dim) for u in items)
    shapes["item_numeric"] = tuple((b, s, ITEM_NUMERIC_WIDTH) for b, s in zip(batch, seq, strict=True))
    shapes["profile_vector"] = tuple((b, PROFILE.vector_width) for b in batch)
    shapes["user_position"] = tuple((b,) for b in batch)
    return shapes


def item_graph_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of the item encoder's inputs for a TensorRT profile."""
    tokens = (1, min(16, config.max_item_tokens), config.max_item_tokens)
    items = (1, min(256, MAX_ITEMS_PER_RUN), MAX_ITEMS_PER_RUN)
    pair = tuple((n, t) for n, t in zip(items, tokens, strict=True))
    return {"input_ids": pair, "attention_mask": pair}


def trt_options(shapes: dict[str, tuple[tuple[int, ...], ...]], cache_dir: Path) -> dict[str, Any]:
    """TensorRT provider options: fp16, engine and timing caches in `cache_dir`, one optimization profile."""
    options: dict[str, Any] = {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
    }
    for i, key in enumerate(("min", "opt", "max")):
        options[f"trt_profile_{key}_shapes"] = ",".join(
            f"{name}:" + "x".join(str(d) for d in triple[i]) for name, triple in shapes.items()
        )
    return options


def session_options() -> ort.SessionOptions:
    """Session options shared by every graph: all graph optimizations, intra-op threads = usable CPUs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = cpu_threads()
    # One graph, one request at a time per call: parallelism inside operators, not between them.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only; which providers a session got is reported by this module
    return options


def cpu_session(path: Path) -> ort.InferenceSession:
    """A CPU session of one graph with the runtime's options (not cached: for export checks and tests)."""
    return ort.InferenceSession(str(path), session_options(), providers=[CPU])


# Sessions live as long as an embedder holds them (a re-exported model's old sessions are not kept forever).
_SESSIONS: weakref.WeakValueDictionary[tuple[str, str, str], ort.InferenceSession] = weakref.WeakValueDictionary()
_SESSIONS_LOCK = threading.Lock()
_BUILD_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}  # one per session being built


def clear_session_cache() -> None:
    """Forget every cached session (they close once no embedder holds them); for tests and benchmarks."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()


def _session(path: Path, digest: str, providers: list[ProviderSpec]) -> tuple[ort.InferenceSession, bool]:
    """The process-wide session of one graph file and provider plan; (session, whether it was just created).

    Threads asking for the same session wait for one build; other sessions (a TensorRT engine build takes
    minutes) do not wait for it.
    """
    key = (str(path.resolve()), digest, repr(providers))
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session, False
        build_lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    with build_lock:
        with _SESSIONS_LOCK:
            session = _SESSIONS.get(key)
        if session is not None:  # built by the thread this one waited for
            return session, False
        session = ort.InferenceSession(str(path), session_options(), providers=providers)
        with _SESSIONS_LOCK:
            _SESSIONS[key] = session
            _BUILD_LOCKS.pop(key, None)
    return session, True


def provider_plan(requested: list[ProviderSpec] | None, *, variant: str) -> tuple[list[ProviderSpec], str | None]:
    """Providers to ask onnxruntime for, most preferred first, and why the GPU is not used (None when it is).

    `requested` (the caller's choice) is kept as given, except TensorRT when its libraries do not load (dropped,
    with a warning: onnxruntime would fail it noisily and retry without the caller's other providers' options);
    TensorRT's and CUDA's libraries are loaded for it.
    Otherwise: TensorRT (if its libraries load), CUDA, CPU when the driver sees a GPU; CPU alone when not, and
    for the int8 variant (dynamic int8 is a CPU format: TensorRT wants QDQ graphs, CUDA lacks the kernels).
    """
    if requested is not None:
        plan = list(requested)
        if TENSORRT in (_provider_name(p) for p in plan) and (reason := load_tensorrt()) is not None:
            plan = [p for p in plan if _provider_name(p) != TENSORRT] or [CPU]
            logger.warning("TensorRT was requested but %s; using %s", reason, [_provider_name(p) for p in plan])
        if any(_provider_name(p) in GPU_PROVIDERS for p in plan):
            _preload_cuda_libraries()
        return plan, None
    if variant == "int8":
        return [CPU], None
    has_gpu, why = gpu_status()
    if not has_gpu:
        return [CPU], why
    _preload_cuda_libraries()
    available = ort.get_available_providers()
    plan: list[ProviderSpec] = []
    if TENSORRT in available:
        if (reason := load_tensorrt()) is None:
            plan.append(TENSORRT)
        else:
            logger.warning("a GPU but no TensorRT: %s; using CUDA", reason)
    if CUDA in available:
        plan.append((CUDA, {"device_id": 0}))
    if not plan:
        return [CPU], f"this onnxruntime build has no GPU providers ({', '.join(available)})"
    return [*plan, CPU], None


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def _with_trt_options(plan: list[ProviderSpec], options: dict[str, Any]) -> list[ProviderSpec]:
    """The plan with TensorRT's options (precision, caches, this graph's profile) where TensorRT is named bare."""
    return [(TENSORRT, options) if p == TENSORRT else p for p in plan]


def default_trt_cache_dir(folder: Path) -> Path:
    """TensorRT engine and timing caches: `<export>.trt-cache` next to the export folder."""
    return folder.parent / f"{folder.name}.trt-cache"


def graph_trt_cache_dir(base: Path, digest: str) -> Path:
    """One graph's TensorRT caches, `<base>/<first 16 hex of its sha256>`, created.

    onnxruntime names an engine after the graph's node and input names, not its weights: a model re-exported
    into the same folder must not find the engine built for the old weights. If `base` cannot be written (a
    read-only mount), a folder under the user cache is used instead (logged).
    """
    folder = base / digest[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError as error:
        from .settings import cache_dir

        fallback = cache_dir() / "trt" / folder.name
        logger.warning("cannot create the TensorRT cache %s (%s): using %s", folder, error, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


# ----- the embedder -----------------------------------------------------------------------------------------


class OnnxEmbedder(Embedder):
    """Embeds with the exported ONNX graphs through onnxruntime (see the module docstring)."""

    max_users_per_run = MAX_USERS_PER_RUN  # the TensorRT profile's largest batch and item table

    def __init__(
        self,
        *,
        folder: Path,
        manifest: dict[str, Any],
        config: ModelConfig,
        builder: SequenceBuilder,
        item_cache: ItemVectorCache,
        item_tokenizer: Any,
        user_session: ort.InferenceSession,
        item_session: ort.InferenceSession,
        variant: str,
    ) -> None:
        """Assemble an embedder from opened parts; use `from_export`."""
        super().__init__(config, builder, item_cache)
        self.folder = folder
        self.manifest = manifest
        self.variant = variant
        self.item_tokenizer = item_tokenizer
        self._user_session = user_session
        self._item_session = item_session
        self._user_inputs = [i.name for i in user_session.get_inputs()]

    @classmethod
    def from_export(
        cls,
        folder: str | Path,
        *,
        providers: list[ProviderSpec] | None = None,
        variant: str = "fp32",
        trt_cache_dir: str | Path | None = None,
    ) -> OnnxEmbedder:
        """Open an export folder.

        Args:
            folder: an export folder written by `instructue export`.
            providers: onnxruntime providers to use, e.g. `["CPUExecutionProvider"]`; None picks TensorRT, then
                CUDA, then CPU according to the hardware (int8: CPU).
            variant: "fp32" or "int8" (the latter needs an export made with `--int8`).
            trt_cache_dir: TensorRT engine/timing cache folder; default `<folder>.trt-cache` beside the export.

        Returns:
            The embedder; `providers` tells which providers its sessions really got.

        Raises:
            ModelNotFoundError, CorruptModelError, SchemaMismatchError: see `manifest.read_manifest`.
            ConfigError: unknown variant, or int8 asked of an export without it.
        """
        from tokenizers import Tokenizer

        folder = Path(folder).expanduser().resolve()
        if variant not in VARIANTS:
            raise ConfigError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        manifest = read_manifest(folder)
        graph_key, graph_file = VARIANTS[variant]
        if graph_file not in manifest["files"]:
            raise ConfigError(f"{folder} has no {variant} graph; export it with `instructue export --int8`")
        config = saved_model_config(manifest.get("model"), source=folder / MANIFEST_FILE)
        llm_tokenizer = Tokenizer.from_file(str(folder / LLM_TOKENIZER_FILE))
        item_tokenizer = ready_item_tokenizer(Tokenizer.from_file(str(folder / ITEM_TOKENIZER_FILE)), config)
        builder = SequenceBuilder(llm_tokenizer, config)
        item_cache = ItemVectorCache.load(folder, dim=manifest["item_dim"])

        plan, why_cpu = provider_plan(providers, variant=variant)
        user_plan, item_plan = plan, plan
        if TENSORRT in (_provider_name(p) for p in plan):
            base = Path(trt_cache_dir) if trt_cache_dir is not None else default_trt_cache_dir(folder)
            user_shapes = user_graph_shapes(config, builder, item_dim=manifest["item_dim"], max_users=MAX_USERS_PER_RUN)
            user_trt_cache = graph_trt_cache_dir(base, manifest["files"][graph_file])
            item_trt_cache = graph_trt_cache_dir(base, manifest["files"][ITEM_GRAPH_FILE])
            user_plan = _with_trt_options(plan, trt_options(user_shapes, user_trt_cache))
            item_plan = _with_trt_options(plan, trt_options(item_graph_shapes(config), item_trt_cache))
        user_session, created = _session(folder / graph_file, manifest["files"][graph_file], user_plan)
        item_session, _ = _session(folder / ITEM_GRAPH_FILE, manifest["files"][ITEM_GRAPH_FILE], item_plan)
        embedder = cls(
            folder=folder,
            manifest=manifest,
            config=config,
            builder=builder,
            item_cache=item_cache,
            item_tokenizer=item_tokenizer,
            user_session=user_session,
            item_session=item_session,
            variant=variant,
        )
        if created:
            embedder._report_providers(user_plan, why_cpu, graph_key)
        return embedder

    def _report_providers(self, plan: list[ProviderSpec], why_cpu: str | None, graph_key: str) -> None:
        """Log the providers the sessions really got (once, when the sessions are created)."""
        asked = [_provider_name(p) for p in plan]
        got = self.providers
        if why_cpu is not None:
            logger.warning(
                "onnxruntime runs on CPU only (%s): %s; onnxruntime lists %s as available, but that says "
                "nothing about the hardware",
                ", ".join(got),
                why_cpu,
                ", ".join(p for p in ort.get_available_providers() if p in GPU_PROVIDERS) or "no GPU providers",
            )
        else:
            for session, providers in ((graph_key, got), ("item_encoder", self.item_providers)):
                if asked[0] != providers[0]:
                    logger.warning(
                        "asked onnxruntime for %s but the %s session got %s (see onnxruntime's errors above)",
                        asked,
                        session,
                        providers,
                    )
        logger.info("%s: %s on %s, item encoder on %s", self.folder, graph_key, got, self.item_providers)

    @property
    def providers(self) -> list[str]:
        """The providers the user-embedding session really got, in priority order."""
        return list(self._user_session.get_providers())

    @property
    def item_providers(self) -> list[str]:
        """The providers the item-encoder session really got."""
        return list(self._item_session.get_providers())

    def _run_user_graph(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: arrays[name] for name in self._user_inputs}
        return self._user_session.run([USER_OUTPUT], feed)[0]

    def _encode_items(self, texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), MAX_ITEMS_PER_RUN):
            encoded = self.item_tokenizer.encode_batch(texts[start : start + MAX_ITEMS_PER_RUN])
            feed = {
                "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            }
            vectors.append(self._item_session.run([ITEM_OUTPUT], feed)[0])
        if not vectors:
            return np.zeros((0, self.item_cache.dim), dtype=np.float32)
        return np.concatenate(vectors).astype(np.float32, copy=False)
