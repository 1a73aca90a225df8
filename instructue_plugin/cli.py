"""The `instructue` command line: the one composition root of the plugin and the training code.

Library errors (`InstructUEError`) become one-line messages and exit code 1; progress bars are drawn here.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import ConfigError, DataValidationError, InstructUEError

app = typer.Typer(
    help="InstructUE for Feast: instruction-aware user embeddings as Feast features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmarks; each writes reports/bench-<name>.json and prints a table.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

REPORTS = Path("reports")


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InstructUEError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None

    return wrapper


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "feast", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parse_users(users: str) -> list[int]:
    try:
        ids = [int(u) for u in users.split(",") if u.strip()]
    except ValueError:
        ids = []
    if not ids:
        raise typer.BadParameter(f"--users must be comma-separated integers, got {users!r}")
    return ids


def _names(comma_separated: str) -> tuple[str, ...]:
    """The non-empty, stripped items of a comma-separated option."""
    return tuple(name.strip() for name in comma_separated.split(",") if name.strip())


def _positive_ints(comma_separated: str, *, option: str) -> tuple[int, ...]:
    """The items of a comma-separated option of positive integers."""
    try:
        values = tuple(int(v) for v in _names(comma_separated))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{option} must be comma-separated positive integers, got {comma_separated!r}")
    return values


def _int8_keep_fp32(option: str | None) -> tuple[str, ...]:
    """The projections `--int8-keep-fp32` names, or the export's default when the option is not given."""
    if option is None:
        from .onnx_int8 import DEFAULT_KEEP_FP32

        return DEFAULT_KEEP_FP32
    return _names(option)


def _entity_rows(users: str, at: str | None) -> Any:
    """The `--users` ids at `--at` (default: the latest snapshot) as entity rows, checked before any work."""
    import pandas as pd

    from training.data import LATEST

    ids = _parse_users(users)
    try:
        when = pd.Timestamp(at, tz="UTC") if at else LATEST
    except ValueError:  # pandas' DateParseError is a ValueError
        raise typer.BadParameter(f"--at must be a date or time such as 2026-06-30T00:00:00, got {at!r}") from None
    return pd.DataFrame({"user_id": ids, "event_timestamp": [when] * len(ids)})


@app.command()
@_friendly_errors
def synth(
    users: Annotated[int, typer.Option(help="Number of users to generate.")],
    out: Annotated[Path, typer.Option(help="Output data folder.")],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    noise_rate: Annotated[float, typer.Option(help="Extra random events per signal event.")] = 0.3,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous run in --out.")] = False,
) -> None:
    """Generate synthetic users: raw event logs, Feast snapshot tables and labels."""
    from training.synth import generate

    summary = generate(out, users=users, seed=seed, noise_rate=noise_rate, overwrite=overwrite)
    typer.echo(f"wrote {summary.users} users to {out}")


@app.command()
@_friendly_errors
def snapshots(
    raw: Annotated[Path, typer.Option(help="Folder of raw event logs (one sub-folder per source).")],
    out: Annotated[Path, typer.Option(help="Output folder for the snapshot tables.")],
    every: Annotated[str, typer.Option(help="Snapshot interval, e.g. 7d or 1d.")] = "7d",
    max_items: Annotated[int | None, typer.Option(help="Items kept per source (default: the schema's).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing snapshot tables.")] = False,
) -> None:
    """Turn raw event logs into the per-user snapshot tables that Feast reads."""
    from training.snapshots import build_snapshots

    written = build_snapshots(raw, out, every=every, max_items=max_items, overwrite=overwrite)
    for source, path in written.items():
        typer.echo(f"{source}: {path}")


@app.command()
@_friendly_errors
def movielens(
    out: Annotated[Path, typer.Option(help="Output data folder (same layout as `instructue synth`).")],
    seed: Annotated[int, typer.Option(help="Seed of the train/eval split.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous build in --out.")] = False,
) -> None:
    """Map MovieLens-100K (read from the installed recbole package, never copied) into a data folder."""
    from training.movielens import build_movielens

    folder = build_movielens(out, seed=seed, overwrite=overwrite)
    typer.echo(f"MovieLens-100K data folder written to {folder}")


@app.command()
@_friendly_errors
def userqa(
    data: Annotated[Path, typer.Option(help="Data folder (snapshots/, raw/, labels.parquet).")],
    out: Annotated[Path, typer.Option(help="Output parquet file.")],
    seed: Annotated[int, typer.Option(help="Seed for cut-offs and paraphrases.")] = 0,
) -> None:
    """Build UserQA triplets from the train users' own data."""
    from training.userqa import build_userqa, write_userqa

    triplets = build_userqa(data, seed=seed)
    catalog = write_userqa(triplets, out)
    counts = triplets["family"].value_counts().to_dict()
    typer.echo(f"wrote {len(triplets)} triplets to {out} (instructions: {catalog})")
    typer.echo(json.dumps(counts, indent=1))


@app.command()
@_friendly_errors
def train(
    data: Annotated[Path, typer.Option(help="Data folder.")],
    out: Annotated[Path, typer.Option(help="Output model folder.")],
    preset: Annotated[str, typer.Option(help="tiny | smol-cpu | smol | hf:<dir>")] = "smol-cpu",
    max_items_per_source: Annotated[
        int | None, typer.Option(help="Items per source the model reads (default: the preset's).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    loss: Annotated[str, typer.Option(help="both | contrastive | ar")] = "both",
    batch_size: Annotated[int, typer.Option(help="Triplets per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the LoRA weights.")] = 1e-3,
    userqa_file: Annotated[Path | None, typer.Option("--userqa", help="A UserQA file (default: built).")] = None,
    time_budget: Annotated[float | None, typer.Option(help="Stop after this many minutes.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
) -> None:
    """Train InstructUE (LoRA, contrastive + autoregressive) on UserQA."""
    from pydantic import ValidationError

    from training.trainer import TrainConfig
    from training.trainer import train as run_training

    try:
        config = TrainConfig(
            data=data,
            out=out,
            preset=preset,
            max_items_per_source=max_items_per_source,
            steps=steps,
            loss=loss,
            batch_size=batch_size,
            lr=lr,
            userqa=userqa_file,
            time_budget_minutes=time_budget,
            seed=seed,
            resume=resume,
        )
    except ValidationError as error:
        problems = (f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_url=False))
        raise typer.BadParameter("; ".join(problems)) from None
    folder = run_training(config)
    typer.echo(f"model saved to {folder}")


@app.command()
@_friendly_errors
def embed(
    model: Annotated[Path, typer.Option(help="A trained model folder or an export folder.")],
    data: Annotated[Path, typer.Option(help="Data folder whose snapshots are read.")],
    users: Annotated[str, typer.Option(help="Comma-separated user ids.")],
    instruction: Annotated[str | None, typer.Option(help="Instruction (default: general embedding).")] = None,
    at: Annotated[str | None, typer.Option(help="Point in time (ISO); default: the latest snapshot.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write a parquet of user_id, embedding here.")] = None,
) -> None:
    """Embed users from a data folder's snapshot tables."""
    import numpy as np
    import pandas as pd

    import instructue_plugin
    from training.data import features_asof

    if out is not None and not out.expanduser().parent.is_dir():
        raise typer.BadParameter(f"--out {out}: the folder {out.expanduser().parent} does not exist")
    entities = _entity_rows(users, at)
    ids = entities["user_id"].tolist()
    vectors = instructue_plugin.load(model).embed(features_asof(data, entities), instruction)
    if out is not None:
        frame = pd.DataFrame({"user_id": ids, "embedding": [v.tolist() for v in vectors]})
        frame.to_parquet(out, index=False)
        typer.echo(f"wrote {len(ids)} embeddings to {out}")
        return
    np.set_printoptions(precision=4, suppress=True)
    for user_id, vector in zip(ids, vectors, strict=True):
        typer.echo(f"{user_id}: {vector[:8]} ... (dim {len(vector)})")


@app.command()
@_friendly_errors
def answer(
    model: Annotated[Path, typer.Option(help="A trained model folder (PyTorch: generation needs the LM head).")],
    data: Annotated[Path, typer.Option(help="Data folder whose snapshots are read.")],
    users: Annotated[str, typer.Option(help="Comma-separated user ids.")],
    question: Annotated[str, typer.Option(help="The question.")] = "What does this user mostly spend money on?",
    at: Annotated[str | None, typer.Option(help="Point in time (ISO); default: the latest snapshot.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 40,
) -> None:
    """Ask the model about users: it answers in words from their behaviour."""
    from training.data import features_asof

    from .embedder import TorchEmbedder

    entities = _entity_rows(users, at)
    embedder = TorchEmbedder.from_pretrained(model)
    features = features_asof(data, entities)
    unanswered = []
    for i, user_id in enumerate(entities["user_id"]):
        try:
            reply = embedder.answer(features.iloc[[i]], question, max_new_tokens=max_new_tokens)
        except DataValidationError as error:  # one unknown user must not cost the others their answers
            typer.secho(f"{user_id}: error: {error}", fg=typer.colors.RED, err=True)
            unanswered.append(user_id)
            continue
        typer.echo(f"{user_id}: {reply}")
    if unanswered:
        raise typer.Exit(code=1)


def _parse_named_paths(value: str | None) -> dict[str, Path]:
    if not value:
        return {}
    pairs = {}
    for item in value.split(","):
        name, _, path = item.partition("=")
        if not path:
            raise typer.BadParameter(f"expected NAME=DIR pairs, got {item!r}")
        pairs[f"ablation_{name.strip()}"] = Path(path.strip())
    return pairs


@app.command()
@_friendly_errors
def evaluate(
    data: Annotated[Path, typer.Option(help="Data folder with labels.parquet (eval split).")],
    model: Annotated[Path, typer.Option(help="A trained model folder or an export folder.")],
    out: Annotated[Path, typer.Option(help="Report folder (report.md, metrics.json, plots).")],
    noise: Annotated[str, typer.Option(help="Comma-separated injected-noise rates.")] = "0,0.25,0.5,1",
    ablation_models: Annotated[
        str | None, typer.Option(help="Ablations as NAME=DIR pairs, e.g. contrastive=runs/cl,ar=runs/ar.")
    ] = None,
    max_users: Annotated[int | None, typer.Option(help="Evaluate at most this many eval users.")] = None,
    dataset: Annotated[str, typer.Option(help="synthetic | movielens")] = "synthetic",
    seed: Annotated[int, typer.Option(help="Seed of the user sample and the noise.")] = 0,
) -> None:
    """Evaluate frozen embeddings against baselines with logistic-regression probes; write a report."""
    from training.evaluate.report import write_report
    from training.evaluate.runner import BINARY_TASKS, EvalSettings
    from training.evaluate.runner import evaluate as run_evaluation

    try:
        rates = tuple(float(r) for r in noise.split(",") if r.strip())
    except ValueError:
        raise typer.BadParameter(f"--noise must be comma-separated numbers, got {noise!r}") from None
    settings = EvalSettings(
        data=data,
        model=model,
        noise_rates=rates,
        max_users=max_users,
        seed=seed,
        ablation_models=_parse_named_paths(ablation_models),
    )
    title = "InstructUE evaluation (synthetic)"
    binary = list(BINARY_TASKS)
    if dataset == "movielens":
        from training.movielens import movielens_settings

        settings, binary, title = movielens_settings(settings)
    elif dataset != "synthetic":
        raise typer.BadParameter(f"--dataset must be synthetic or movielens, got {dataset!r}")
    metrics = run_evaluation(settings)
    summary = write_report(metrics, out, binary_tasks=binary, title=title)
    typer.echo((out / "report.md").read_text())
    typer.echo(
        f"report written to {out} (best baseline {summary['best_baseline']}, "
        f"margin {summary['margin_over_best_baseline']:+.4f})"
    )


@bench_app.command("synth")
@_friendly_errors
def bench_synth(
    users: Annotated[int, typer.Option(help="Users to generate.")] = 1_000_000,
    out: Annotated[
        Path | None, typer.Option(help="Keep the data in this new folder (default: a temporary folder).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generator throughput and peak memory -> reports/bench-synth.json."""
    from training.bench_synth import format_table, run

    report = run(users, out_dir=out, seed=seed, report_path=REPORTS / "bench-synth.json", progress=True)
    typer.echo(format_table(report))


@bench_app.command("train")
@_friendly_errors
def bench_train(
    presets: Annotated[str, typer.Option(help="Comma-separated presets.")] = "tiny,smol-cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Triplets per step.")] = 16,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per preset.")] = 5,
) -> None:
    """Training samples/s and seconds per step -> reports/bench-train.json."""
    from training.bench_train import format_table, run

    report = run(presets=_names(presets), batch_size=batch_size, steps=steps, report_path=REPORTS / "bench-train.json")
    typer.echo(format_table(report))


@bench_app.command("embed")
@_friendly_errors
def bench_embed(
    presets: Annotated[str, typer.Option(help="Comma-separated presets (smol is slow on a CPU).")] = "smol-cpu",
    batches: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    int8_keep_fp32: Annotated[
        str | None, typer.Option(help='As for `instructue export`: e.g. down_proj; "" quantizes them all.')
    ] = None,
    report: Annotated[Path, typer.Option(help="Where the JSON report goes.")] = REPORTS / "bench-embed.json",
) -> None:
    """PyTorch eager vs onnxruntime fp32 vs int8 throughput -> reports/bench-embed.json."""
    from training.bench_embed import format_table, run

    result = run(
        presets=_names(presets),
        batches=_positive_ints(batches, option="--batches"),
        int8_keep_fp32=_int8_keep_fp32(int8_keep_fp32),
        report_path=report,
        progress=typer.echo,
    )
    typer.echo(format_table(result))


@bench_app.command("int8")
@_friendly_errors
def bench_int8(
    model: Annotated[Path, typer.Option(help="An export made with --int8.")],
    data: Annotated[Path, typer.Option(help="Data folder with labels.parquet (eval split).")],
    max_users: Annotated[int | None, typer.Option(help="Evaluate at most this many eval users.")] = None,
    report: Annotated[Path, typer.Option(help="Where the JSON report goes.")] = REPORTS / "bench-int8.json",
) -> None:
    """Probe AUC of the int8 variant vs fp32 on the evaluation tasks -> reports/bench-int8.json."""
    from training.evaluate.variant_parity import int8_probe_parity

    result = int8_probe_parity(model, data, max_users=max_users, report_path=report)
    for name, row in result["aucs"].items():
        low, high = row["served_difference_95ci"]
        typer.echo(
            f"{name:<32} fp32 {row['fp32']:.4f}  int8 served {row['int8_served']:.4f} "
            f"({row['served_difference']:+.4f}, 95% CI {low:+.4f}..{high:+.4f})"
            f"  refit {row['int8_refit']:.4f} ({row['refit_difference']:+.4f})  probe noise {row['probe_noise']:+.4f}"
        )
    typer.echo(
        f"largest |difference|: served {result['max_abs_served_difference']:.4f} (target <= 0.005), "
        f"refit {result['max_abs_refit_difference']:.4f}, probe noise {result['max_abs_probe_noise']:.4f}"
    )


@bench_app.command("online")
@_friendly_errors
def bench_online(
    repo: Annotated[Path, typer.Option(help="An applied and materialized Feast repo.")] = Path("feast_repo"),
    repeats: Annotated[int, typer.Option(min=1, help="Reads per case.")] = 200,
) -> None:
    """get_online_features latency: raw, materialized and on-read embeddings -> reports/bench-online.json."""
    from training.bench_online import format_table, run

    report = run(repo, report_path=REPORTS / "bench-online.json", repeats=repeats)
    typer.echo(format_table(report))


@app.command()
@_friendly_errors
def materialize(
    repo: Annotated[Path, typer.Option(help="The applied Feast repo.")] = Path("feast_repo"),
    instructions: Annotated[
        Path | None, typer.Option(help="Named instructions (default: <repo>/instructions.yaml).")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Model or export folder (default: INSTRUCTUE_MODEL).")] = None,
    batch_size: Annotated[int, typer.Option(help="Users per batch (the unit of resumption).")] = 256,
    force: Annotated[bool, typer.Option(help="Recompute everything, ignoring the resume state.")] = False,
) -> None:
    """Compute the named instructions' embeddings for every user and write them to the online store."""
    from .materialize import materialize_embeddings

    summary = materialize_embeddings(
        repo, instructions_file=instructions, model_path=model, batch_size=batch_size, force=force
    )
    typer.echo(summary.describe())


@app.command()
@_friendly_errors
def export(
    model: Annotated[Path, typer.Option(help="A trained model folder.")],
    out: Annotated[Path, typer.Option(help="Export folder (ONNX graphs, tokenizers, item cache, manifest).")],
    int8: Annotated[bool, typer.Option(help="Also write a per-channel int8 variant for CPUs.")] = False,
    int8_keep_fp32: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated projections the int8 variant keeps in fp32, e.g. down_proj (slower, closer to "
            'fp32); "" quantizes them all. Default: the first decoder layer\'s down projection.'
        ),
    ] = None,
    int8_outlier_channels: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Intermediate channels per decoder MLP the int8 variant computes in fp32 (those with the largest "
            "activations on the calibration rows); 0 splits none. Default: 32.",
        ),
    ] = None,
    calibration_data: Annotated[
        Path | None,
        typer.Option(
            help="Data folder whose users' latest rows join the parity check and calibrate the int8 variant "
            "(default: generated example rows only)."
        ),
    ] = None,
    int8_min_cosine: Annotated[
        float | None,
        typer.Option(
            help="Fail if an int8 embedding's cosine to fp32 on the real parity rows falls below this (default "
            "0.99; 0 accepts any int8 graph)."
        ),
    ] = None,
    exporter: Annotated[str, typer.Option(help="legacy | dynamo | auto (legacy, falling back to dynamo).")] = "auto",
    tolerance: Annotated[
        float, typer.Option(help="Largest max-abs difference allowed between onnxruntime (fp32) and PyTorch.")
    ] = 1e-4,
) -> None:
    """Export a trained model to ONNX, check it (checker and parity with PyTorch) and write a manifest."""
    from .onnx_export import MAX_PARITY_FEATURE_ROWS, export_model

    if (int8_keep_fp32 is not None or int8_outlier_channels is not None or int8_min_cosine is not None) and not int8:
        raise ConfigError("--int8-keep-fp32, --int8-outlier-channels and --int8-min-cosine need --int8")
    keep = _int8_keep_fp32(int8_keep_fp32)
    int8_options = {
        name: value
        for name, value in (("int8_outlier_channels", int8_outlier_channels), ("int8_min_cosine", int8_min_cosine))
        if value is not None
    }
    features = None
    if calibration_data is not None:
        from training.data import latest_features_sample

        features = latest_features_sample(calibration_data, MAX_PARITY_FEATURE_ROWS)
        typer.echo(f"checking parity{' and calibrating int8' if int8 else ''} on {len(features)} users' latest rows")
    folder = export_model(
        model,
        out,
        int8=int8,
        int8_keep_fp32=keep,
        exporter=exporter,
        tolerance=tolerance,
        parity_features=features,
        **int8_options,
        progress=typer.echo,
    )
    typer.echo(f"export written to {folder}")


@app.command()
@_friendly_errors
def demo(fresh: Annotated[bool, typer.Option(help="Redo every step instead of reusing outputs.")] = False) -> None:
    """The whole path on the embedded default: data, training, evaluation, export, Feast, and two users."""
    from training.demo import run_demo

    run_demo(echo=typer.echo, fresh=fresh)


if __name__ == "__main__":  # `python -m instructue_plugin.cli`, e.g. under `accelerate launch`
    app()
