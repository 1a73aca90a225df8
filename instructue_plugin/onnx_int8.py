"""The int8 variant of the user graph: activation smoothing, per-channel dynamic quantization, its parity.

Dynamic int8 quantizes weights per output channel and activations with one scale per tensor, at run time. The
decoder MLPs' down projections see activations with a few huge channels (pretrained LLMs), so before
quantizing, the export copy is smoothed (SmoothQuant, folded into the weights: the fp32 function is unchanged),
each MLP's few largest intermediate channels are split into projections of their own that stay fp32
(LLM.int8()'s decomposition), and the copy is exported again; then only matmuls with constant weights are
quantized (attention's activation products and the token-embedding table stay fp32). The activation maxima
come from the export's real parity cases: generated example rows, plus the users of `--calibration-data` when
given, whose activations are those the served graph will see.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .logs import quiet_loggers
from .manifest import USER_GRAPH_FILE, USER_GRAPH_INT8_FILE, USER_OUTPUT
from .onnx_runtime import cpu_session

logger = logging.getLogger(__name__)

# SmoothQuant strength: 0 leaves activations alone, 1 moves all their range into the weights. 0.8 measured best:
# int8 vs fp32 min cosine on smol-cpu 0.975 (none) -> 0.998 (down_proj) -> 0.999 (all groups); on smol (30 layers)
# 0.980 (down_proj) -> 0.988 (all groups).
SMOOTHING_ALPHA = 0.8

# Matmuls the int8 variant keeps in fp32 unless told otherwise: the first decoder layer's down projection. On
# trained smol-cpu models it carries most of the int8 error (see `quantize_int8`), for a few per cent of the
# int8 speed (README, "int8 on CPUs").
DEFAULT_KEEP_FP32: tuple[str, ...] = ("layers.0/mlp/down_proj",)


# Smallest cosine of an int8 embedding to its fp32 one on the export's real inputs: below it the export fails.
INT8_MIN_COSINE = 0.99

# Intermediate channels per decoder MLP that the int8 variant computes in fp32 (an LLM.int8()-style decomposition,
# see `split_outlier_channels`): the channels with the largest activations on the calibration rows.
OUTLIER_CHANNELS = 32
# Name fragment of the outlier channels' projections in the graph: always kept fp32.
OUTLIER_FRAGMENT = "_outliers/"


# Linear layers smoothed together, by the activation X they read:
# name -> (module writing X, whether it is a linear layer (else a norm), modules reading X).
_SMOOTHING_GROUPS: dict[str, Callable[[Any], tuple[Any, bool, list[Any]]]] = {
    "attention_input": lambda layer: (layer.input_layernorm, False, _modules(layer.self_attn, "q k v")),
    "mlp_input": lambda layer: (layer.post_attention_layernorm, False, _modules(layer.mlp, "gate up")),
    "mlp_inner": lambda layer: (_plain_linear(layer.mlp.up_proj), True, _modules(layer.mlp, "down")),
}


def _smoothing_plans(model: Any) -> dict[tuple[int, str], tuple[Any, bool, list[Any]]]:
    """Every (layer, group) of the decoder that has the group's modules."""
    plans = {}
    for i, layer in enumerate(model.llm.get_base_model().get_decoder().layers):
        for name, pick in _SMOOTHING_GROUPS.items():
            try:
                plans[(i, name)] = pick(layer)
            except AttributeError:
                continue
    return plans


@contextlib.contextmanager
def recording_activation_peaks(model: Any) -> Iterator[dict[tuple[int, str], Any]]:
    """While active, every forward pass of `model` updates the per-channel maxima |X| that smoothing needs.

    Yields the (layer, group) -> (channels,) maxima, filled as the model runs (the export records them in the
    same pass over its real cases as the RMSNorm check).
    """
    import torch

    peaks: dict[tuple[int, str], torch.Tensor] = {}

    def record(key: tuple[int, str]) -> Callable[..., None]:
        def hook(module: Any, args: tuple) -> None:
            peak = args[0].detach().abs().flatten(0, -2).amax(0)  # (channels,)
            peaks[key] = torch.maximum(peaks[key], peak) if key in peaks else peak

        return hook

    plans = _smoothing_plans(model)
    handles = [readers[0].register_forward_pre_hook(record(key)) for key, (_, _, readers) in plans.items()]
    try:
        yield peaks
    finally:
        for handle in handles:
            handle.remove()


def smooth_activations(model: Any, peaks: dict[tuple[int, str], Any], *, alpha: float) -> dict[str, int]:
    """SmoothQuant on the decoder's linear layers, in place; the function computed stays the same (in fp32).

    Pretrained LLMs have a few activation channels hundreds of times larger than the rest; dynamic int8 quantizes
    an activation with one scale per tensor, which flattens every other channel (int8 vs fp32 cosine 0.975 on
    smol-cpu). For each group of linear layers reading the same activation X, channel j is divided by
    s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha) (activation maxima `peaks` from `recording_activation_peaks`,
    weight maxima over the group) and the weights' input column j is multiplied by it: the range moves into the
    weights, which are quantized per channel. The division is folded into the layer that writes X, so no
    operator is added:

    - q/k/v_proj read input_layernorm's output: its weight absorbs 1/s;
    - gate/up_proj read post_attention_layernorm's output: likewise;
    - down_proj reads silu(gate) * up: up_proj's output rows absorb 1/s (the product is linear in up).

    Returns:
        Layers smoothed per group (0 for a group whose modules this backbone does not have).
    """
    import torch

    plans = _smoothing_plans(model)
    if set(peaks) != set(plans):
        raise ValueError("activation peaks were not recorded for this model's layers: run it under recording first")
    with torch.no_grad():
        for key, (writer, is_linear, readers) in plans.items():
            weight_peak = torch.stack([r.weight.abs().amax(0) for r in readers]).amax(0).clamp(min=1e-5)
            scale = (peaks[key].clamp(min=1e-5).pow(alpha) / weight_peak.pow(1 - alpha)).clamp(min=1e-5)
            if is_linear:
                writer.weight.div_(scale[:, None])  # (channels, in): output row j
                if writer.bias is not None:
                    writer.bias.div_(scale)
            else:
                writer.weight.div_(scale)  # RMSNorm's (channels,) gain
            for reader in readers:
                reader.weight.mul_(scale[None, :])  # (out, channels): input column j
    counts = {name: sum(1 for (_, group) in plans if group == name) for name in _SMOOTHING_GROUPS}
    if not any(counts.values()):
        logger.warning("the backbone's layers have none of the usual projections: int8 without activation smoothing")
    return counts


def _split_mlp(mlp: Any, outliers: Any) -> Any:
    """An `nn.Module` computing the gated `mlp`'s function with the `outliers` intermediate channels split off.

    gate/up/down_proj keep every other channel; gate/up/down_outliers compute the outlier channels; the two down
    projections' outputs are added. In the graph they are separate matmuls, so the quantizer can keep the small
    outlier ones in fp32.
    """
    import torch
    from torch import nn

    gate, up, down = (_plain_linear(getattr(mlp, f"{name}_proj")) for name in ("gate", "up", "down"))
    is_outlier = torch.zeros(gate.out_features, dtype=torch.bool)
    is_outlier[outliers] = True
    kept, split = (~is_outlier).nonzero().squeeze(1), is_outlier.nonzero().squeeze(1)

    def rows(linear: Any, index: Any) -> Any:
        out = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
        out.weight.data = linear.weight.data[index].clone()
        if linear.bias is not None:
            out.bias.data = linear.bias.data[index].clone()
        return out

    def columns(linear: Any, index: Any, *, with_bias: bool) -> Any:
        out = nn.Linear(len(index), linear.out_features, bias=with_bias and linear.bias is not None)
        out.weight.data = linear.weight.data[:, index].clone()
        if out.bias is not None:
            out.bias.data = linear.bias.data.clone()
        return out

    class SplitMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj, self.up_proj = rows(gate, kept), rows(up, kept)
            self.down_proj = columns(down, kept, with_bias=True)
            self.gate_outliers, self.up_outliers = rows(gate, split), rows(up, split)
            self.down_outliers = columns(down, split, with_bias=False)
            self.act_fn = mlp.act_fn

        def forward(self, x: Any) -> Any:
            main = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
            return main + self.down_outliers(self.act_fn(self.gate_outliers(x)) * self.up_outliers(x))

    return SplitMLP()


def split_outlier_channels(
    model: Any, peaks: dict[tuple[int, str], Any], *, channels: int, keep_fp32: Sequence[str] = ()
) -> int:
    """Split each decoder MLP's `channels` largest intermediate channels into their own projections, in place.

    The down projections read silu(gate) * up, in which a few channels are hundreds of times larger than the
    rest; dynamic int8 gives that activation one scale, and smoothing moves the excess into the weights'
    columns, where it inflates every output channel's weight scale. With those channels computed apart (and
    kept fp32: a few % of one MLP's work), the rest quantizes finely (LLM.int8()'s mixed-precision
    decomposition). Channels are ranked by the activation maxima `peaks` (from `recording_activation_peaks`).
    An MLP whose down projection `keep_fp32` names (as `quantize_int8` matches graph nodes) is left whole: its
    outliers are already computed in fp32.

    Returns:
        The number of MLPs split (0 for a backbone without gated MLPs, or `channels` 0).
    """
    if channels <= 0:
        return 0
    layers = model.llm.get_base_model().get_decoder().layers
    count = 0
    for i, layer in enumerate(layers):
        peak = peaks.get((i, "mlp_inner"))
        if peak is None or _module_named(f"/layers.{i}/mlp/down_proj/", keep_fp32):
            continue
        outliers = peak.topk(min(channels, peak.numel() - 1)).indices
        layer.mlp = _split_mlp(layer.mlp, outliers)
        count += 1
    return count


def _named(name: str, fragments: Sequence[str]) -> bool:
    """Whether a graph node's `name` holds one of `fragments` (how `--int8-keep-fp32` names matmuls). Dots and
    slashes count alike, and LoRA's `base_layer` level is skipped: `layers.0.mlp.down_proj`,
    `layers.0/mlp/down_proj` and the node name the manifest lists, `/model/layers.0/mlp/down_proj/base_layer/MatMul`,
    name the same matmul."""
    return any(_plain_name(fragment) in _plain_name(name) for fragment in fragments)


def _module_named(module: str, fragments: Sequence[str]) -> bool:
    """Whether `fragments` name the matmul of `module` (a path like `/layers.0/mlp/down_proj/`): as `_named`, or
    by a whole node name that holds the module's path."""
    return _named(module, fragments) or any(_plain_name(module) in _plain_name(fragment) for fragment in fragments)


def _plain_name(name: str) -> str:
    return name.replace(".", "/").replace("/base_layer/", "/")


def _modules(parent: Any, names: str) -> list[Any]:
    """The plain linear layers `<name>_proj` of `parent` (AttributeError when one is missing)."""
    return [_plain_linear(getattr(parent, f"{name}_proj")) for name in names.split()]


def _plain_linear(module: Any) -> Any:
    """The `nn.Linear` under a (merged) LoRA wrapper, or the module itself."""
    return getattr(module, "base_layer", module)


def quantize_int8(
    source: Path,
    target: Path,
    scratch: Path,
    *,
    keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32,
    always_fp32: Sequence[str] = (),
) -> dict[str, Any]:
    """Per-channel dynamic int8 weights for the matmuls with constant weights (per-tensor damages neighbours).

    Dynamic int8 gives each activation tensor one scale for the whole batch. The MLP down projections read
    silu(gate) * up, whose few huge channels survive smoothing (measured on a trained smol-cpu model: the first
    layer's down projection causes most of the error). `keep_fp32` names module fragments (e.g. "down_proj")
    whose matmuls stay fp32: slower, closer to fp32; `()` quantizes them all. `always_fp32` names fragments kept
    in fp32 besides (the outlier channels' projections), not reported as kept on request.

    Returns:
        How many matmuls were quantized and kept in fp32, and the names of the kept nodes.

    Raises:
        ConfigError: a `keep_fp32` name other than the default's matches no matmul of the graph.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer re-runs shape inference; stale value_info from the exporter can contradict it: drop it.
    large = sum(p.stat().st_size for p in source.parent.glob(f"{source.name}*")) > 1_800_000_000  # + .data
    model = onnx.load(str(source))
    del model.graph.value_info[:]
    constants = {tensor.name for tensor in model.graph.initializer}
    weighted = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]
    excluded = [name for name in weighted if _named(name, (*keep_fp32, *always_fp32))]
    unmatched = [fragment for fragment in keep_fp32 if not any(_named(name, (fragment,)) for name in weighted)]
    if unmatched and tuple(keep_fp32) != DEFAULT_KEEP_FP32:
        raise ConfigError(f"--int8-keep-fp32 {', '.join(unmatched)}: no matmul of the user graph has that name")
    if unmatched:  # a backbone that names its layers otherwise: the default keeps nothing
        logger.info("no matmul named %s in this graph: every projection is quantized", ", ".join(unmatched))
    prepared = scratch / "prepared.onnx"
    onnx.save_model(model, str(prepared), save_as_external_data=large, location="prepared.onnx.data")
    del model
    with quiet_loggers(""):  # the quantizer logs every skipped tensor at INFO on the root logger
        quantize_dynamic(
            str(prepared),
            str(target),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],  # not Gather: the token-embedding table stays fp32
            # Attention's activation x activation matmuls stay fp32: only weights are quantized.
            extra_options={"MatMulConstBOnly": True},
            nodes_to_exclude=excluded,
            use_external_data_format=large,
        )
    return {"quantized": len(weighted) - len(excluded), "kept_fp32": len(excluded), "kept_fp32_nodes": excluded}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, E) matrices."""
    num = (a * b).sum(1)
    return num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(min=1e-12)


def int8_parity(folder: Path, random_cases: list[dict], real_cases: list[dict]) -> dict[str, Any]:
    """Cosine of the int8 graph's embeddings to the fp32 graph's (both onnxruntime, CPU), on real and random inputs."""
    fp32 = cpu_session(folder / USER_GRAPH_FILE)
    int8 = cpu_session(folder / USER_GRAPH_INT8_FILE)

    def cosines(cases: list[dict[str, np.ndarray]]) -> np.ndarray:
        runs = [
            (
                int8.run([USER_OUTPUT], {i.name: case[i.name] for i in int8.get_inputs()})[0],
                fp32.run([USER_OUTPUT], {i.name: case[i.name] for i in fp32.get_inputs()})[0],
            )
            for case in cases
        ]
        return np.concatenate([row_cosines(a, b) for a, b in runs])

    real, random = cosines(real_cases), cosines(random_cases)
    return {
        "vs": "fp32 graph, onnxruntime CPU",
        "real_min_cosine": float(real.min()),
        "real_mean_cosine": float(real.mean()),
        "random_min_cosine": float(random.min()),
        "random_mean_cosine": float(random.mean()),
    }
