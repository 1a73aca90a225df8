"""ONNX export and the onnxruntime embedder on the `tiny` preset: parity, manifest checks, providers, threads."""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import instructue_plugin
from instructue_plugin.config import config_for_preset
from instructue_plugin.embedder import TorchEmbedder
from instructue_plugin.errors import ConfigError, CorruptModelError, SchemaMismatchError
from instructue_plugin.featurize import featurize
from instructue_plugin.item_cache import ItemVectorCache
from instructue_plugin.manifest import MANIFEST_FILE, USER_GRAPH_FILE, read_manifest
from instructue_plugin.model import InstructUEModel
from instructue_plugin.onnx_export import ExportError, ExportParityError, export_is_of, export_model
from instructue_plugin.onnx_int8 import OUTLIER_CHANNELS, OUTLIER_FRAGMENT
from instructue_plugin.onnx_runtime import OnnxEmbedder, clear_session_cache, gpu_status, graph_trt_cache_dir
from instructue_plugin.schema import SCHEMA_HASH
from instructue_plugin.sequence import GRAPH_INPUT_NAMES
from tests.helpers import feature_rows, select_rows

FUND = "Represent this user for predicting fund purchases in the next 30 days."
CHURN = "Represent this user for predicting churn in the next 30 days."
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows() -> dict[str, list]:
    # Row 1 lacks two sources, row 3 its profile, row 4 two more: lengths differ, so batches are padded.
    return feature_rows(
        6, seed=1, missing={1: ["bill", "search"], 3: ["profile"], 4: ["app", "miniprogram", "page_path"]}
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, rows) -> Path:
    """A saved tiny model whose LoRA is not the identity (so merging it matters) and whose catalog is cached."""
    model = InstructUEModel.create(config_for_preset("tiny")).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    TorchEmbedder(model).embed(rows)  # fills the item cache: the export precomputes these texts
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def export_dir(model_dir, tmp_path_factory) -> Path:
    return export_model(model_dir, tmp_path_factory.mktemp("exports") / "export", int8=True)


@pytest.fixture(scope="module")
def torch_embedder(model_dir) -> TorchEmbedder:
    return TorchEmbedder(InstructUEModel.from_pretrained(model_dir))


@pytest.fixture(scope="module")
def onnx_embedder(export_dir) -> OnnxEmbedder:
    return OnnxEmbedder.from_export(export_dir, providers=["CPUExecutionProvider"])


def test_manifest_describes_the_export(export_dir, model_dir):
    manifest = read_manifest(export_dir)
    assert manifest["schema_hash"] == SCHEMA_HASH
    assert manifest["exporter"]["name"] == "legacy" and manifest["exporter"]["fallback_reason"] is None
    assert {"torch", "transformers", "onnx", "onnxruntime", "onnxscript"} <= set(manifest["versions"])
    user = manifest["graphs"]["user_embedding"]
    assert [i["name"] for i in user["inputs"]] == list(GRAPH_INPUT_NAMES)
    assert [o["name"] for o in user["outputs"]] == ["user_embedding"]
    assert user["outputs"][0]["shape"] == ["batch", manifest["embedding_dim"]]
    shapes = {i["name"]: i["shape"] for i in user["inputs"]}
    assert shapes["input_ids"] == ["batch", "seq"] and shapes["item_vectors"] == ["items", manifest["item_dim"]]
    item = manifest["graphs"]["item_encoder"]
    assert [o["name"] for o in item["outputs"]] == ["item_vector"]
    assert item["inputs"][0]["shape"] == ["texts", "tokens"]
    parity = manifest["parity"]
    for graph in ("user_embedding", "item_encoder"):
        assert parity[graph]["random_max_abs_diff"] <= 1e-4 and parity[graph]["real_max_abs_diff"] <= 1e-4
    assert parity["user_embedding_int8"]["real_min_cosine"] >= 0.99
    assert parity["user_embedding_int8"]["smoothed"] == {"attention_input": 2, "mlp_input": 2, "mlp_inner": 2}
    assert export_dir.stat().st_mode & 0o777 == 0o755  # readable by a server running as another user
    # 2 layers x 7 projections; the second MLP's outlier channels split into 3 more (the first layer's down
    # projection is kept fp32 whole): by default all but those 4 are quantized.
    assert parity["user_embedding_int8"]["outlier_channels"] == {"per_mlp": OUTLIER_CHANNELS, "mlps_split": 1}
    matmuls = parity["user_embedding_int8"]["matmuls"]
    assert matmuls["kept_fp32"] == 4 and matmuls["kept_fp32_requested"] == ["layers.0/mlp/down_proj"]
    outliers = [n for n in matmuls["kept_fp32_nodes"] if OUTLIER_FRAGMENT in n]
    assert all("layers.1/mlp" in n for n in outliers) and {n.split("/")[-2] for n in outliers} == {
        "gate_outliers",
        "up_outliers",
        "down_outliers",
    }
    requested = [n for n in matmuls["kept_fp32_nodes"] if n not in outliers]
    assert len(requested) == 1 and "layers.0/mlp/down_proj" in requested[0]
    assert matmuls["quantized"] >= 13
    catalog = json.loads((model_dir / "item_cache.json").read_text())
    assert parity["item_encoder"]["catalog"]["texts"] == len(catalog) > 0
    expected = {"user_embedding.onnx", "user_embedding.int8.onnx", "item_encoder.onnx", "llm_tokenizer.json"}
    assert expected | {"item_tokenizer.json", "item_cache.npy", "item_cache.json"} <= set(manifest["files"])


def test_an_export_knows_the_weights_it_was_made_from(export_dir, model_dir, tmp_path):
    assert export_is_of(export_dir, model_dir)
    damaged = shutil.copytree(export_dir, tmp_path / "damaged")
    (damaged / USER_GRAPH_FILE).unlink()
    assert not export_is_of(damaged, model_dir), "an export that would not load is not up to date"
    retrained = InstructUEModel.from_pretrained(model_dir)
    with torch.no_grad():
        retrained.head.weight.add_(0.01)  # e.g. a longer training run saved into the same folder
    retrained.save_pretrained(tmp_path / "retrained")
    assert not export_is_of(export_dir, tmp_path / "retrained")
    assert not export_is_of(tmp_path / "no-export", model_dir)


@pytest.mark.parametrize(
    "instruction", [FUND, None, [FUND, CHURN, None, FUND, CHURN, ""]], ids=["fund", "general", "mixed"]
)
@pytest.mark.parametrize("batch_size", [32, 4])
def test_onnxruntime_matches_pytorch(onnx_embedder, torch_embedder, rows, instruction, batch_size):
    expected = torch_embedder.embed(rows, instruction, batch_size=batch_size)
    got = onnx_embedder.embed(rows, instruction, batch_size=batch_size)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_int8_can_keep_named_projections_in_fp32(export_dir, tmp_path):
    import onnx

    from instructue_plugin.onnx_int8 import quantize_int8

    target = tmp_path / "int8.onnx"
    counts = quantize_int8(export_dir / USER_GRAPH_FILE, target, tmp_path, keep_fp32=("down_proj",))
    assert counts["kept_fp32"] == 2  # one per layer
    nodes = onnx.load(str(target)).graph.node
    down = [n for n in nodes if "down_proj" in n.name and "MatMul" in n.op_type]
    assert down and all(n.op_type == "MatMul" for n in down)  # plain fp32 matmuls
    assert any(n.op_type == "MatMulInteger" and "up_proj" in n.name for n in nodes)
    everything = quantize_int8(export_dir / USER_GRAPH_FILE, tmp_path / "all.onnx", tmp_path, keep_fp32=())
    assert everything == {"quantized": counts["quantized"] + 2, "kept_fp32": 0, "kept_fp32_nodes": []}
    with pytest.raises(ConfigError, match="no_such_proj"):
        quantize_int8(export_dir / USER_GRAPH_FILE, tmp_path / "x.onnx", tmp_path, keep_fp32=("no_such_proj",))
    # A module name with dots, or the node name a manifest lists, name the same matmul as the default's fragment.
    listed = read_manifest(export_dir)["parity"]["user_embedding_int8"]["matmuls"]["kept_fp32_nodes"]
    layer0 = next(node for node in listed if "layers.0/mlp/down_proj" in node)
    for name in ("layers.0.mlp.down_proj", layer0):
        kept = quantize_int8(export_dir / USER_GRAPH_FILE, tmp_path / "one.onnx", tmp_path, keep_fp32=(name,))
        assert kept["kept_fp32_nodes"] == [layer0], name


def test_splitting_outlier_channels_keeps_the_function_and_picks_the_largest(model_dir, rows):
    from instructue_plugin.onnx_int8 import recording_activation_peaks, split_outlier_channels

    model = InstructUEModel.from_pretrained(model_dir).merge_lora().eval()
    embedder = TorchEmbedder(model)
    with recording_activation_peaks(model) as peaks:
        before = embedder.embed(rows, FUND)
    assert split_outlier_channels(model, peaks, channels=5) == 2  # both layers' MLPs
    np.testing.assert_allclose(embedder.embed(rows, FUND), before, atol=1e-5)
    first = model.llm.get_base_model().get_decoder().layers[0].mlp
    intermediate = first.gate_proj.out_features + first.gate_outliers.out_features
    assert first.gate_outliers.out_features == 5 and first.down_proj.in_features == intermediate - 5
    largest = set(peaks[(0, "mlp_inner")].topk(5).indices.tolist())
    original = InstructUEModel.from_pretrained(model_dir).merge_lora()
    gate = original.llm.get_base_model().get_decoder().layers[0].mlp.gate_proj.base_layer.weight
    picked = {int(i) for i, row in enumerate(gate) for out in first.gate_outliers.weight if torch.equal(row, out)}
    assert picked == largest


def test_outlier_channels_in_fp32_bring_int8_closer_when_activations_have_outliers(model_dir, tmp_path):
    model = InstructUEModel.from_pretrained(model_dir)
    with torch.no_grad():  # a few intermediate channels far larger than the rest, as in pretrained LLMs
        for layer in model.llm.get_base_model().get_decoder().layers:
            layer.mlp.up_proj.base_layer.weight[:4] *= 60.0
    model.save_pretrained(tmp_path / "model")
    cosine = {}
    for channels in (0, 4):
        export = export_model(
            tmp_path / "model",
            tmp_path / f"export-{channels}",
            int8=True,
            int8_keep_fp32=(),
            int8_outlier_channels=channels,
            int8_min_cosine=0.0,  # the unsplit graph may be poor: that is the point
        )
        cosine[channels] = read_manifest(export)["parity"]["user_embedding_int8"]["real_mean_cosine"]
    assert 1 - cosine[4] < 0.5 * (1 - cosine[0])


def test_an_int8_graph_far_from_fp32_fails_the_export_and_writes_nothing(model_dir, tmp_path):
    model = InstructUEModel.from_pretrained(model_dir)
    with torch.no_grad():  # huge outlier channels, none of them split off or kept fp32
        for layer in model.llm.get_base_model().get_decoder().layers:
            layer.mlp.up_proj.base_layer.weight[:4] *= 200.0
            layer.mlp.gate_proj.base_layer.weight[:4] *= 10.0
    model.save_pretrained(tmp_path / "model")
    options = {"int8": True, "int8_keep_fp32": (), "int8_outlier_channels": 0}
    with pytest.raises(ExportParityError, match="int8 graph's embeddings reach a cosine of only"):
        export_model(tmp_path / "model", tmp_path / "export", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_int8_outlier_channels_need_module_named_matmuls(model_dir, tmp_path):
    with pytest.raises(ExportError, match="dynamo exporter's graph does not name its matmuls"):
        export_model(model_dir, tmp_path / "export", int8=True, exporter="dynamo")


def test_the_default_fp32_projection_is_optional_for_backbones_that_name_layers_otherwise(
    export_dir, tmp_path, monkeypatch
):
    from instructue_plugin import onnx_int8

    monkeypatch.setattr(onnx_int8, "DEFAULT_KEEP_FP32", ("transformer.h.0/mlp/c_proj",))  # a GPT-2-style name
    counts = onnx_int8.quantize_int8(
        export_dir / USER_GRAPH_FILE, tmp_path / "int8.onnx", tmp_path, keep_fp32=onnx_int8.DEFAULT_KEEP_FP32
    )
    assert counts["kept_fp32"] == 0 and counts["kept_fp32_nodes"] == [] and counts["quantized"] > 0


def test_int8_variant_stays_close(export_dir, torch_embedder, rows):
    int8 = OnnxEmbedder.from_export(export_dir, variant="int8")
    assert int8.providers == ["CPUExecutionProvider"]
    for instruction in (FUND, None):
        cosine = (int8.embed(rows, instruction) * torch_embedder.embed(rows, instruction)).sum(1)
        assert cosine.min() >= 0.99


def test_export_precomputes_the_catalog_and_encodes_unseen_items(export_dir, model_dir, torch_embedder, rows):
    embedder = OnnxEmbedder.from_export(export_dir, providers=["CPUExecutionProvider"])
    catalog = json.loads((model_dir / "item_cache.json").read_text())
    assert len(embedder.item_cache) == len(catalog) and all(text in embedder.item_cache for text in catalog)
    fresh = {name: [list(v) if isinstance(v, list) else v for v in values] for name, values in rows.items()}
    fresh["bill_merchant"][0][-1] = "A merchant nobody has seen"
    fresh["search_query"][2][-1] = "cheap flights to Chengdu"
    assert "A merchant nobody has seen · travel" not in embedder.item_cache
    got = embedder.embed(fresh, FUND)
    assert np.abs(got - torch_embedder.embed(fresh, FUND)).max() <= 1e-4
    assert "cheap flights to Chengdu" in embedder.item_cache


def test_unknown_user_gets_nan_row(onnx_embedder, rows):
    unknown = feature_rows(1, seed=5, missing={0: ["bill", "miniprogram", "page_path", "app", "search", "profile"]})
    mixed = {name: rows[name][:2] + unknown[name] for name in rows}
    out = onnx_embedder.embed(mixed, FUND)
    assert np.isnan(out[2]).all() and np.isfinite(out[:2]).all()


def test_dynamo_exporter_fallback_passes_parity(model_dir, torch_embedder, rows, tmp_path):
    folder = export_model(model_dir, tmp_path / "dynamo", exporter="dynamo")
    manifest = read_manifest(folder)
    assert manifest["exporter"]["name"] == "dynamo"
    embedder = OnnxEmbedder.from_export(folder, providers=["CPUExecutionProvider"])
    for instruction in (FUND, None):
        assert np.abs(embedder.embed(rows, instruction) - torch_embedder.embed(rows, instruction)).max() <= 1e-4
    with pytest.raises(ConfigError, match="--int8"):
        OnnxEmbedder.from_export(folder, variant="int8")


def test_parity_failure_is_loud_and_writes_nothing(model_dir, tmp_path):
    with pytest.raises(ExportParityError, match="differs from PyTorch"):
        export_model(model_dir, tmp_path / "strict", exporter="legacy", tolerance=1e-12)
    assert not (tmp_path / "strict").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


def test_export_replaces_an_earlier_export_and_refuses_swapped_folders(export_dir, model_dir, tmp_path):
    earlier = shutil.copytree(export_dir, tmp_path / "export")
    (earlier / "stale.txt").write_text("from the earlier export")
    export_model(model_dir, earlier)
    assert not (earlier / "stale.txt").exists() and read_manifest(earlier)["format"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no set-aside or staging folder left
    with pytest.raises(ExportError, match="is an export folder; pass the trained model folder"):
        export_model(export_dir, tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export_model(model_dir, tmp_path / "file")


def test_export_refuses_a_folder_that_is_not_an_export(model_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an export folder"):
        export_model(model_dir, tmp_path)
    (tmp_path / "manifest.json").write_text('{"name": "my web app"}')  # another tool's manifest
    with pytest.raises(ExportError, match="not an export folder"):
        export_model(model_dir, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "notes.txt"]


def test_exporter_failures_are_an_export_error_naming_both_exporters(model_dir, tmp_path, monkeypatch):
    from instructue_plugin import onnx_export

    def failing(export_copy, reference, folder, name, *args):
        raise RuntimeError(f"{name} cannot trace this model")

    monkeypatch.setattr(onnx_export, "_export_checked", failing)
    with pytest.raises(ExportError, match="dynamo exporter failed.*after the legacy exporter failed"):
        export_model(model_dir, tmp_path / "export")
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written, no staging folder left


def test_parity_counts_a_non_finite_output_in_any_case_as_a_failure():
    from instructue_plugin.onnx_export import _max_diff

    class Session:  # onnxruntime's side: finite for the first case, NaN for the second
        def __init__(self, outputs):
            self.outputs = iter(outputs)

        def get_inputs(self):
            return [type("Input", (), {"name": "x"})()]

        def run(self, names, feed):
            return [next(self.outputs)]

    cases = [{"x": np.zeros((2, 3), np.float32)}, {"x": np.ones((2, 3), np.float32)}]

    def same(x):  # PyTorch's side: the input itself
        return x

    assert _max_diff(Session([c["x"] for c in cases]), "y", same, cases) == 0.0
    assert math.isnan(_max_diff(Session([cases[0]["x"], np.full((2, 3), np.nan, np.float32)]), "y", same, cases))
    assert _max_diff(Session([c["x"][:1] for c in cases]), "y", same, cases) == math.inf  # a shape mismatch


def test_tampered_file_is_refused(export_dir, tmp_path):
    copy = shutil.copytree(export_dir, tmp_path / "export")
    graph = copy / USER_GRAPH_FILE
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match=r"user_embedding\.onnx.*re-export"):
        OnnxEmbedder.from_export(copy)


def test_other_schema_hash_is_refused(export_dir, tmp_path):
    copy = shutil.copytree(export_dir, tmp_path / "export")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["schema_hash"] = "0000000000000000"
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(SchemaMismatchError, match="0000000000000000.*export it again"):
        instructue_plugin.load(copy)


def test_invalid_model_configuration_in_the_manifest_is_refused(export_dir, tmp_path):
    copy = shutil.copytree(export_dir, tmp_path / "export")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["model"]["an_option_of_a_later_version"] = True
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CorruptModelError, match="invalid model configuration"):
        instructue_plugin.load(copy)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: m["files"].pop("llm_tokenizer.json"), r"does not list llm_tokenizer\.json"),
        (lambda m: m.pop("item_dim"), "no valid item_dim"),
        (lambda m: m.update(item_dim="384"), "no valid item_dim"),
    ],
    ids=["unlisted tokenizer", "no item_dim", "item_dim as text"],
)
def test_an_incomplete_manifest_is_refused(export_dir, tmp_path, damage, message):
    copy = shutil.copytree(export_dir, tmp_path / "export")
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    damage(manifest)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CorruptModelError, match=message):
        instructue_plugin.load(copy)


@pytest.mark.skipif(gpu_status()[0], reason="this machine has a GPU")
def test_without_gpu_sessions_run_on_cpu_and_one_warning_says_why(export_dir, caplog):
    clear_session_cache()
    with caplog.at_level(logging.WARNING, logger="instructue_plugin.onnx_runtime"):
        embedder = OnnxEmbedder.from_export(export_dir)
    assert embedder.providers == ["CPUExecutionProvider"]
    assert embedder.item_providers == ["CPUExecutionProvider"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("onnx_runtime")]
    assert len(warnings) == 1
    assert "CPU only" in warnings[0].getMessage() and "NVIDIA" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("tensorrt_loads", "expected"),
    [
        (True, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
        (False, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_provider_plan_on_a_mocked_gpu_prefers_tensorrt_then_cuda_then_cpu(monkeypatch, tensorrt_loads, expected):
    # No GPU here: the driver, onnxruntime's provider list and TensorRT's libraries are mocked.
    from instructue_plugin import onnx_runtime
    from instructue_plugin.onnx_runtime import CPU

    monkeypatch.setattr(onnx_runtime, "gpu_status", lambda: (True, None))
    monkeypatch.setattr(onnx_runtime, "_preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(
        onnx_runtime.ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    )
    monkeypatch.setattr(onnx_runtime, "load_tensorrt", lambda: None if tensorrt_loads else "no libnvinfer")
    plan, why_cpu = onnx_runtime.provider_plan(None, variant="fp32")
    assert [p if isinstance(p, str) else p[0] for p in plan] == expected and why_cpu is None
    assert onnx_runtime.provider_plan(None, variant="int8") == (["CPUExecutionProvider"], None)  # a CPU format


def test_requested_tensorrt_whose_libraries_fail_is_dropped_from_a_mocked_plan(monkeypatch, caplog):
    from instructue_plugin import onnx_runtime
    from instructue_plugin.onnx_runtime import CPU

    monkeypatch.setattr(onnx_runtime, "_preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(onnx_runtime, "load_tensorrt", lambda: "no libnvinfer")
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    with caplog.at_level(logging.WARNING, logger="instructue_plugin.onnx_runtime"):
        plan, _ = onnx_runtime.provider_plan(
            ["TensorrtExecutionProvider", cuda, "CPUExecutionProvider"], variant="fp32"
        )
    assert plan == [cuda, CPU]  # the caller's CUDA options kept
    assert "TensorRT was requested but no libnvinfer" in caplog.text
    assert onnx_runtime.provider_plan(["TensorrtExecutionProvider"], variant="fp32")[0] == [CPU]


def test_sessions_are_shared_per_export_while_held_and_released_after(export_dir):
    import gc

    from instructue_plugin import onnx_runtime

    clear_session_cache()
    first = OnnxEmbedder.from_export(export_dir, providers=["CPUExecutionProvider"])
    second = OnnxEmbedder.from_export(export_dir, providers=["CPUExecutionProvider"])
    assert first._user_session is second._user_session and first._item_session is second._item_session
    assert len(onnx_runtime._SESSIONS) == 2
    del first, second
    gc.collect()
    assert len(onnx_runtime._SESSIONS) == 0, "sessions no embedder holds are not kept"


def test_batches_beyond_the_tensorrt_profile_run_in_parts_with_their_own_item_tables(export_dir, monkeypatch):
    from instructue_plugin.onnx_runtime import MAX_USERS_PER_RUN, user_graph_shapes

    many = feature_rows(MAX_USERS_PER_RUN + 40, seed=4)
    embedder = OnnxEmbedder.from_export(export_dir, providers=["CPUExecutionProvider"])
    limits = user_graph_shapes(
        embedder.config, embedder.builder, item_dim=embedder.item_cache.dim, max_users=MAX_USERS_PER_RUN
    )
    seen: list[tuple[int, int]] = []
    run = embedder._run_user_graph

    def recording(arrays):
        seen.append((len(arrays["user_position"]), len(arrays["item_vectors"])))
        return run(arrays)

    monkeypatch.setattr(embedder, "_run_user_graph", recording)
    whole = embedder.embed(many, FUND, batch_size=512)
    assert [users for users, _ in seen] == [MAX_USERS_PER_RUN, 40]
    assert all(items <= limits["item_vectors"][2][0] for _, items in seen)
    np.testing.assert_allclose(whole, embedder.embed(many, FUND, batch_size=32), atol=1e-5)


def test_concurrent_embed_calls_match_serial_calls(onnx_embedder, export_dir, rows):
    jobs = [(select_rows(rows, [i % 6, (i + 1) % 6, (i + 3) % 6]), [FUND, CHURN, None][i % 3]) for i in range(16)]
    serial = [onnx_embedder.embed(features, instruction) for features, instruction in jobs]
    # A second embedder with an empty item cache: the threads also encode items and fill the cache concurrently.
    fresh = OnnxEmbedder.from_export(export_dir, providers=["CPUExecutionProvider"])
    fresh.item_cache = ItemVectorCache(dim=fresh.item_cache.dim)
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda job: fresh.embed(*job), jobs))
    assert len(fresh.item_cache) > 0
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, other)


def test_load_dispatches_export_folders_to_onnxruntime(export_dir):
    assert isinstance(instructue_plugin.load(export_dir), OnnxEmbedder)
    assert instructue_plugin.load(export_dir, variant=" INT8").variant == "int8"  # as INSTRUCTUE_MODEL_VARIANT is read


def test_embedding_with_onnxruntime_loads_neither_torch_nor_transformers(export_dir):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import instructue_plugin
        from tests.helpers import feature_rows
        embedder = instructue_plugin.load({str(export_dir)!r})
        out = embedder.embed(feature_rows(3, seed=2), "for fund marketing")
        assert out.shape == (3, embedder.dim), out.shape
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        print("heavy:", heavy)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "heavy: []" in result.stdout


def test_tensorrt_caches_are_per_graph_digest_and_fall_back_when_unwritable(tmp_path, monkeypatch, caplog):
    # A re-export into the same folder has a new digest, so it cannot pick up the old weights' engine.
    old, new = "a" * 64, "b" * 64
    assert graph_trt_cache_dir(tmp_path / "trt", old) != graph_trt_cache_dir(tmp_path / "trt", new)
    assert (tmp_path / "trt" / old[:16]).is_dir()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("INSTRUCTUE_CACHE", str(tmp_path / "user-cache"))
    with caplog.at_level(logging.WARNING):
        fallback = graph_trt_cache_dir(blocked, new)
    assert fallback == (tmp_path / "user-cache" / "trt" / new[:16]).resolve() and fallback.is_dir()
    assert "cannot create the TensorRT cache" in caplog.text


# ----- GPU only (deselected by default; run with -m gpu on a machine with an NVIDIA GPU) --------------------


@pytest.mark.gpu
def test_tensorrt_fp16_parity_gpu_only(export_dir, torch_embedder, rows, tmp_path):
    pytest.importorskip("tensorrt")
    embedder = OnnxEmbedder.from_export(export_dir, trt_cache_dir=tmp_path / "trt")
    assert embedder.providers[0] == "TensorrtExecutionProvider"
    cosine = (embedder.embed(rows, FUND) * torch_embedder.embed(rows, FUND)).sum(1)
    assert cosine.min() >= 0.999
    assert any((tmp_path / "trt").iterdir()), "the TensorRT engine cache is written"


@pytest.mark.gpu
def test_cuda_parity_gpu_only(export_dir, torch_embedder, rows):
    embedder = OnnxEmbedder.from_export(export_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert embedder.providers[0] == "CUDAExecutionProvider"
    cosine = (embedder.embed(rows, FUND) * torch_embedder.embed(rows, FUND)).sum(1)
    assert cosine.min() >= 0.9999


def test_operator_profile_splits_both_backends_graph_time(export_dir, torch_embedder, onnx_embedder, rows):
    from training.bench_embed import operator_shares

    users = featurize(rows, max_items_per_source=onnx_embedder.config.max_items_per_source)
    inputs = onnx_embedder.builder.build(users, [FUND] * len(users))
    arrays = inputs.graph_inputs(onnx_embedder.item_vectors(inputs.item_texts))
    shares = operator_shares(torch_embedder, export_dir / USER_GRAPH_FILE, arrays, runs=2, top=5)
    for backend in ("pytorch_eager", "onnxruntime_fp32"):
        assert sum(shares[backend].values()) == pytest.approx(1.0, abs=1e-3)
        assert len(shares[backend]) == 6  # the top 5 and "other"
    assert any("mm" in op or "linear" in op for op in shares["pytorch_eager"])
    assert any("MatMul" in op or "Gemm" in op for op in shares["onnxruntime_fp32"])


def test_the_environment_picks_the_served_variant(export_dir, model_dir, rows, monkeypatch):
    int8 = OnnxEmbedder.from_export(export_dir, variant="int8").embed(rows, FUND)
    fp32 = OnnxEmbedder.from_export(export_dir).embed(rows, FUND)
    monkeypatch.setenv("INSTRUCTUE_MODEL_VARIANT", "int8")
    served = instructue_plugin.load(export_dir).embed(rows, FUND)
    assert np.array_equal(served, int8) and not np.array_equal(served, fp32)
    with pytest.raises(ConfigError, match="needs an export folder"):
        instructue_plugin.load(model_dir)
    monkeypatch.setenv("INSTRUCTUE_MODEL_VARIANT", "int4")
    with pytest.raises(ConfigError, match="unknown variant 'int4'"):
        instructue_plugin.load(export_dir)


def test_exported_rms_norm_is_the_library_function_and_stays_finite_in_fp16():
    # SmolLM2's residual stream reaches ~2.3e4 in a few channels: an fp16 copy of the library's RMSNorm squares
    # that (an fp16 graph, e.g. a TensorRT fp16 engine, has no fp32 cast to save it) and overflows.
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from instructue_plugin.onnx_export import fp16_safe_rms_norm, make_rms_norms_fp16_safe

    model = torch.nn.Sequential(LlamaRMSNorm(576, eps=1e-5)).eval()
    with torch.no_grad():
        model[0].weight.copy_(1 + 0.1 * torch.randn(576, generator=torch.Generator().manual_seed(0)))
    hidden = torch.randn(2, 5, 576, generator=torch.Generator().manual_seed(1))
    hidden[:, 1:, 7] = 22_500.0  # a massive activation on every position after the first
    hidden[1, 0] = 0.0  # and an all-zero row
    with torch.no_grad():
        reference = model(hidden)
        assert torch.isinf(hidden.half().pow(2).mean(-1)).any()  # the input does overflow fp16
        in_fp16 = fp16_safe_rms_norm(copy.deepcopy(model[0]).half(), hidden.half()).float()

        assert make_rms_norms_fp16_safe(model) == ["0"]
        patched = model(hidden)
    assert torch.isfinite(in_fp16).all()
    torch.testing.assert_close(in_fp16, reference, rtol=1e-2, atol=5e-2)
    torch.testing.assert_close(patched, reference, rtol=1e-5, atol=1e-5)
    assert model[0].forward.__func__ is fp16_safe_rms_norm


def test_only_rms_norms_whose_inputs_overflow_fp16_are_changed_and_onnxruntime_keeps_their_epsilon(tmp_path):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from instructue_plugin.onnx_export import fp16_risky_rms_norms, make_rms_norms_fp16_safe
    from instructue_plugin.onnx_runtime import cpu_session

    class TwoNorms(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calm, self.massive = LlamaRMSNorm(64, eps=1e-5), LlamaRMSNorm(64, eps=1e-5)

        def forward(self, x):
            return self.calm(x) + self.massive(x * 2_000.0)  # mean squares ~1 and ~4e6

    model = TwoNorms().eval()
    hidden = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
    hidden[0, 0] = 1e-3  # a nearly-zero row, where epsilon matters
    with torch.no_grad():
        reference = model(hidden).numpy()
    risky = fp16_risky_rms_norms(model, lambda: model(hidden))
    assert risky == ["massive"]
    assert make_rms_norms_fp16_safe(model, risky) == ["massive"]

    path = tmp_path / "norms.onnx"
    torch.onnx.export(model, (hidden,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    out = cpu_session(path).run(None, {"x": hidden.numpy()})[0]  # the runtime's options: all graph fusions on
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
