"""The whole pipeline, end to end: prepare, train, evaluate, tune, compare, predict, infer.

One typed settings object drives every stage; `poster-ray pipeline` and
`jobs/pipeline.py` only turn arguments into it. Profiles are the presets: `quick` runs
in minutes on a 2-core laptop, `full` is the real thing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from poster_ray.config import PreprocessSpec, RunDir, TrainConfig, TuneSettings
from poster_ray.errors import PosterRayError


@dataclass(frozen=True)
class PipelineSettings:
    """Everything one end-to-end run needs; the stages' own settings inside."""

    out: Path
    data: str | None = None  # dataset folder; None: $POSTER_DATA, else the default clone
    image_size: int = PreprocessSpec.image_size
    limit: int | None = None  # a random sample of this many posters
    seed: int = 42
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneSettings = field(default_factory=TuneSettings)
    infer_batch_size: int = 64
    num_cpus: int | None = None  # for a local Ray; ignored inside a cluster


# The quick profile: a sample of posters, smaller images, a few epochs, so the whole
# pipeline runs in minutes on a 2-core laptop; full is the real thing.
PROFILES = {
    "quick": {
        "limit": 1500,
        "image_size": 128,
        "train": TrainConfig(epochs=4),
        "tune": TuneSettings(trials=3, max_epochs=2),
    },
    "full": {
        "limit": None,
        "image_size": 250,
        "train": TrainConfig(epochs=30),
        "tune": TuneSettings(trials=12, max_epochs=10),
    },
}


def profile_settings(profile: str, out: Path, **overrides) -> PipelineSettings:
    """The settings of `profile`, with `overrides` (None values are left to the profile)."""
    if profile not in PROFILES:
        raise PosterRayError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    return PipelineSettings(out=Path(out), **{**PROFILES[profile], **given})


@dataclass
class PipelineResult:
    """Where each stage left its output, and the headline numbers."""

    run: RunDir
    models: dict[str, Path] = field(default_factory=dict)
    headlines: dict[str, dict] = field(default_factory=dict)
    comparison: Path | None = None
    predictions: list[dict] = field(default_factory=list)
    inference: dict = field(default_factory=dict)
    seconds: float = 0.0
    logs: Path | None = None  # Ray's full logs of every process, on this node


def run_pipeline(settings: PipelineSettings) -> PipelineResult:
    """Run every stage in order on a local Ray (or the cluster a job runs in)."""
    from poster_ray import data
    from poster_ray.runtime import init_ray, ray_logs_dir

    started = time.perf_counter()
    data_dir = data.resolve_data_dir(settings.data, dict(os.environ))
    run = RunDir(settings.out)
    stage("prepare", f"{data_dir} -> {run.root}")
    summary = data.prepare(
        data_dir,
        run,
        PreprocessSpec(settings.image_size),
        settings.seed,
        settings.limit,
        settings.num_cpus,
    )
    print(data.format_summary(summary).split("\n\n")[0])
    init_ray(settings.num_cpus)
    result = PipelineResult(run)

    model = settings.train.model
    stage("train", model)
    train_and_evaluate(result, model, settings.train)

    tuned = f"tuned_{model}"
    stage("tune", f"{model}, {settings.tune.trials} trials")
    tune_and_evaluate(result, tuned, settings.train, settings.tune)

    stage("compare", "the models beside the trivial baselines")
    result.comparison = write_comparison(run, run.root / "comparison.md")

    samples = sorted(str(path) for path in (data_dir / "samples").glob("*.jpg"))
    bundle = result.models[model] / "bundle"
    if samples:
        stage("predict", f"{len(samples)} sample posters with {model}")
        result.predictions = predict_samples(bundle, samples)

    stage("infer", f"every prepared poster with {model}, to Parquet")
    result.inference = infer_manifest(run, bundle, settings.infer_batch_size)
    result.seconds = round(time.perf_counter() - started, 1)
    result.logs = ray_logs_dir()
    return result


def stage(name: str, what: str) -> None:
    print(f"\n== {name}: {what}", flush=True)


def train_and_evaluate(result: PipelineResult, name: str, config: TrainConfig) -> None:
    from poster_ray import train
    from poster_ray.evaluate import evaluate_model_dir, format_headline

    out = train.train(result.run, name, config)
    headline = evaluate_model_dir(out, result.run)
    print(format_headline(headline, table=False))
    result.models[name], result.headlines[name] = out, headline


def tune_and_evaluate(
    result: PipelineResult, name: str, base: TrainConfig, settings: TuneSettings
) -> None:
    from poster_ray import tune
    from poster_ray.evaluate import evaluate_model_dir, format_headline

    out = tune.tune_model(result.run, name, replace(base, early_stopping=0), settings)
    print(tune.format_summary(out))
    headline = evaluate_model_dir(out, result.run)
    print(format_headline(headline, table=False))
    result.models[name], result.headlines[name] = out, headline


def write_comparison(run: RunDir, output: Path) -> Path:
    from poster_ray.evaluate import compare_models

    table = compare_models([run.root])
    output.write_text(f"# Model comparison (test split)\n\n{table}")
    print(table, end="")
    return output


def predict_samples(bundle: Path, posters: list[str]) -> list[dict]:
    from poster_ray.bundle import load_bundle
    from poster_ray.predict import format_predictions, predict_files

    rows = predict_files(load_bundle(bundle), posters)
    print(format_predictions(rows))
    return rows


def infer_manifest(run: RunDir, bundle: Path, batch_size: int) -> dict:
    """Bulk inference over every prepared poster (the manifest has a path column)."""
    from poster_ray.infer import format_summary, run_inference

    summary = run_inference(
        bundle, str(run.manifest), run.root / "predictions", batch_size=batch_size
    )
    print(format_summary(summary))
    return summary


def format_result(result: PipelineResult) -> str:
    """The run's verdict: each model's micro-F1 against the baseline, and where things are."""
    lines = ["\n== done in " + f"{result.seconds:.0f} s"]
    for name, headline in result.headlines.items():
        verdict = "beats" if headline["beats_baseline"] else "does NOT beat"
        lines.append(
            f"{name}: micro-F1 {headline['micro_f1@calibrated']:.3f} {verdict} "
            f"'{headline['baseline']}' ({headline['baseline_micro_f1']:.3f})"
        )
    lines.append(f"comparison: {result.comparison}")
    lines.append(f"predictions: {result.inference.get('output')}")
    lines.append(f"full logs: {result.logs}")
    return "\n".join(lines)
