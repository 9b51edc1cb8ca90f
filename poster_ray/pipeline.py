"""The whole pipeline, end to end: prepare, train, evaluate, tune, compare, predict, infer,
report.

One typed settings object (config.PipelineSettings) drives every stage; `poster-ray
pipeline` and `jobs/pipeline.py` only turn arguments into it. Profiles are the presets:
`quick` runs in minutes on a 2-core laptop, `full` is the real thing. Two models train: the report's
CNN from scratch and a pretrained backbone under a genre head (in `full`, the backbone
fine-tuned after it); the head is tuned, and the model that scores best on validation
predicts the samples and the bulk inference.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace

from poster_ray.config import (
    InferSettings,
    PipelineSettings,
    PrepareSettings,
    PreprocessSpec,
    TrackingSettings,
    TrainConfig,
    TuneSettings,
)
from poster_ray.errors import PosterRayError
from poster_ray.layout import ModelDir, RunDir
from poster_ray.storage import Location

# The quick profile: a sample of posters, small CNN inputs, a few epochs, EfficientNet-
# Lite0's frozen features, so that the whole pipeline runs in minutes on a 2-core
# laptop; full is the real thing; tiny checks that every stage runs (tests, clusters).
PROFILES = {
    "tiny": PipelineSettings(
        prepare=PrepareSettings(image_size=32),
        cnn=TrainConfig(
            epochs=2,
            batch_size=16,
            hparams={"filters": [4, 8], "kernel_size": 3, "dense_units": [16]},
        ),
        # One worker for the head (the CNN shows two): each worker imports TensorFlow.
        pretrained=TrainConfig(
            model="efficientnet_lite0", input_size=64, epochs=3, batch_size=16, workers=1
        ),
        tune=TuneSettings(trials=2, max_epochs=2),
    ),
    "quick": PipelineSettings(
        prepare=PrepareSettings(limit=1500, image_size=128),
        cnn=TrainConfig(epochs=4),
        pretrained=TrainConfig(model="efficientnet_lite0", epochs=20, batch_size=64),
        tune=TuneSettings(trials=3, max_epochs=20, grace_period=5),
    ),
    # The best measured recipe (README, "The whole backbone fine-tuned"): Lite0's head on
    # frozen features, then all 17 of its blocks trained beside it, the backbone at a
    # tenth of the head's rate, the best epoch on validation PR-AUC kept. Its bundle has
    # one backbone, so bulk inference runs at Lite0's rate.
    "full": PipelineSettings(
        cnn=TrainConfig(epochs=30),
        pretrained=TrainConfig(
            model="efficientnet_lite0",
            epochs=40,
            monitor="val_pr_auc",
            fine_tune_blocks=17,
            fine_tune_epochs=12,
            fine_tune_learning_rate=3e-4,
            fine_tune_backbone_rate=0.1,
        ),
        tune=TuneSettings(trials=12, max_epochs=40, grace_period=5),
    ),
}
# What the hardware options set in the inference stage too: the device and precision
# the models trained in.
INFER_HARDWARE_FIELDS = ("gpu", "precision")


def profile_settings(
    profile: str,
    prepare: dict | None = None,
    hardware: dict | None = None,
    tune: dict | None = None,
    tracking: dict | None = None,
    pretrained: str | None = None,
) -> PipelineSettings:
    """The settings of `profile` with the given fields changed: `prepare` and `tune` in
    their stages, `hardware` in both trainings and, for device and precision, in bulk
    inference, `tracking` for every model; `pretrained` names the pretrained model."""
    if profile not in PROFILES:
        raise PosterRayError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    settings, hardware = PROFILES[profile], hardware or {}
    # Another pretrained model is that model alone, frozen: the profile's other backbones
    # and its fine-tuned blocks were chosen for its own.
    model = {"model": pretrained, "more_backbones": [], "fine_tune_blocks": 0} if pretrained else {}
    infer = {key: value for key, value in hardware.items() if key in INFER_HARDWARE_FIELDS}
    return replace(
        settings,
        prepare=replace(settings.prepare, **(prepare or {})),
        cnn=replace(settings.cnn, **hardware),
        pretrained=replace(settings.pretrained, **hardware, **model),
        tune=replace(settings.tune, **(tune or {})),
        infer=replace(settings.infer, **infer),
        tracking=replace(settings.tracking, **(tracking or {})),
    )


@dataclass
class PipelineResult:
    """Where each stage left its output, and the headline numbers."""

    run: RunDir
    models: dict[str, Location] = field(default_factory=dict)
    headlines: dict[str, dict] = field(default_factory=dict)
    best: str | None = None  # the model chosen on validation for predictions
    comparison: Location | None = None
    report: Location | None = None  # the run's HTML page
    predictions: list[dict] = field(default_factory=list)
    inference: dict = field(default_factory=dict)
    seconds: float = 0.0
    logs: str | None = None  # Ray's full logs of every process, on this node


def run_pipeline(settings: PipelineSettings) -> PipelineResult:
    """Run every stage in order on a local Ray (or the cluster a job runs in); a stage
    that waits on resources longer than `waits.WAIT_REPORT_SECONDS` says so."""
    from poster_ray.runtime import init_ray
    from poster_ray.waits import reporting_waits

    started = time.perf_counter()
    init_ray(settings.prepare.num_cpus)
    with reporting_waits():
        return run_stages(settings, started)


def run_stages(settings: PipelineSettings, started: float) -> PipelineResult:
    from poster_ray.data.prepare import format_prepare_summary, prepare
    from poster_ray.data.source import resolve_data_dir
    from poster_ray.report.run_page import write_run_report
    from poster_ray.runtime import ray_logs_dir

    preparing = settings.prepare
    data_dir = resolve_data_dir(preparing.data, dict(os.environ))
    run = RunDir(preparing.out)
    stage("prepare", f"{data_dir} -> {run.root}", started)
    summary = prepare(
        data_dir,
        run,
        PreprocessSpec(preparing.image_size),
        preparing.seed,
        preparing.limit,
        preparing.num_cpus,
    )
    print(format_prepare_summary(summary).split("\n\n")[0])
    result = PipelineResult(run)

    stage("train", "the report's CNN, from scratch", started)
    train_and_evaluate(result, settings.cnn.model, settings.cnn, settings.tracking)
    pretrained = settings.pretrained
    stage("train", f"{pretrained_name(pretrained)}: {describe_pretrained(pretrained)}", started)
    train_and_evaluate(result, pretrained_name(pretrained), pretrained, settings.tracking)
    backbones = backbones_name(pretrained)
    stage("tune", f"{backbones}'s head, {settings.tune.trials} trials", started)
    tune_and_evaluate(result, f"tuned_{backbones}", pretrained, settings.tune, settings.tracking)

    stage("compare", "the models beside the trivial baselines", started)
    result.comparison = write_comparison(run, run.comparison)
    result.best = best_on_validation(result)
    bundle = ModelDir(result.models[result.best]).bundle

    samples = [str(path) for path in (data_dir / "samples").glob("*.jpg")]
    if samples:
        stage("predict", f"{len(samples)} sample posters with {result.best}", started)
        result.predictions = predict_samples(bundle, samples)

    stage("infer", f"every prepared poster with {result.best}, to Parquet", started)
    result.inference = infer_manifest(run, bundle, settings.infer)
    stage("report", "the run's HTML page", started)
    result.report = write_run_report(run)
    result.seconds = round(time.perf_counter() - started, 1)
    result.logs = str(ray_logs_dir())
    return result


def backbones_name(config: TrainConfig) -> str:
    """A pretrained model's backbones, joined: the name of its tuned head."""
    return "+".join([config.model, *config.more_backbones])


def pretrained_name(config: TrainConfig) -> str:
    """The pretrained model's name in the run: its backbones, and whether they were
    fine-tuned."""
    return backbones_name(config) + ("_fine_tuned" if config.fine_tune_blocks else "")


def describe_pretrained(config: TrainConfig) -> str:
    """What the pretrained model's stage trains, for its stage line."""
    frozen = "frozen ImageNet backbones" if config.more_backbones else "a frozen ImageNet backbone"
    if not config.fine_tune_blocks:
        return f"{frozen} under a genre head"
    return (
        f"a genre head on {frozen}, then its top {config.fine_tune_blocks} block(s) "
        f"fine-tuned for up to {config.fine_tune_epochs} epochs"
    )


def stage(name: str, what: str, started: float) -> None:
    print(f"\n== {name}: {what} ({time.perf_counter() - started:.0f} s in)", flush=True)


def train_and_evaluate(
    result: PipelineResult, name: str, config: TrainConfig, tracking: TrackingSettings
) -> None:
    from poster_ray import train

    reused = train.is_trained(result.run, name, config)
    out = train.train(result.run, name, config)
    record_evaluation(result, name, out, reused)
    track(tracking, out, "train", reused)


def tune_and_evaluate(
    result: PipelineResult,
    name: str,
    base: TrainConfig,
    settings: TuneSettings,
    tracking: TrackingSettings,
) -> None:
    from poster_ray.tracking import tune_callbacks
    from poster_ray.tune.experiment import tune_model
    from poster_ray.tune.results import format_tuning_summary, is_tuned

    reused = is_tuned(result.run.model(name), settings)
    # Trials share the nodes: their workers' CPUs are planned per trial, not as trained.
    base = replace(base, cpus_per_worker=None)
    out = tune_model(result.run, name, base, settings, callbacks=tune_callbacks(tracking))
    print(format_tuning_summary(out))
    record_evaluation(result, name, out, reused)
    track(tracking, out, "tune", reused)


def track(tracking: TrackingSettings, model_dir: Location, stage: str, reused: bool) -> None:
    """A model trained by this run to MLflow, when asked; a reused one was logged by the
    run that trained it."""
    from poster_ray.tracking import log_model

    if not reused:
        log_model(tracking, model_dir, stage)


def record_evaluation(result: PipelineResult, name: str, model_dir: Location, reused: bool) -> None:
    """Evaluate model `name` and print its verdict; a reused model keeps the evaluation it
    already has."""
    from poster_ray.evaluate import evaluate_model_dir, format_headline

    layout = ModelDir(model_dir)
    earlier = layout.metrics.read_json()["headline"] if layout.metrics.is_file() else {}
    # An evaluation from before verdicts had intervals is redone.
    if reused and "versus_baseline" in earlier:
        headline = earlier
    else:
        headline = evaluate_model_dir(model_dir, result.run)
    print(format_headline(headline, table=False))
    result.models[name], result.headlines[name] = model_dir, headline


def best_on_validation(result: PipelineResult) -> str:
    """The model with the highest validation micro-F1 (never chosen on the test split)."""
    return max(result.headlines, key=lambda name: result.headlines[name]["val_micro_f1"])


def write_comparison(run: RunDir, output: Location) -> Location:
    from poster_ray.evaluate import compare_models

    table = compare_models([run.root])
    output.write_text(f"# Model comparison (test split)\n\n{table}")
    print(table, end="")
    return output


def predict_samples(bundle: Location, posters: list[str]) -> list[dict]:
    from poster_ray.bundle import load_bundle
    from poster_ray.predict import format_predictions, predict_files

    rows = predict_files(load_bundle(bundle), posters)
    print(format_predictions(rows))
    return rows


def infer_manifest(run: RunDir, bundle: Location, settings: InferSettings) -> dict:
    """Bulk inference over every prepared poster (the manifest has a path column)."""
    from poster_ray.infer import format_inference_summary, run_inference

    drop_stale_predictions(run.predictions, bundle)
    summary = run_inference(bundle.uri, run.manifest.uri, run.predictions.uri, **asdict(settings))
    print(format_inference_summary(summary))
    return summary


def drop_stale_predictions(output: Location, bundle: Location) -> None:
    """The run's predictions are redone when its best model changed since they were made
    (a changed setting retrained it): they describe a model the run no longer holds."""
    from poster_ray.bundle import bundle_info
    from poster_ray.infer.output import JOB_FILE

    job_file = output / JOB_FILE
    if not job_file.is_file():
        return
    if job_file.read_json().get("bundle_hash") != bundle_info(bundle).get("content_hash"):
        print(f"{output} was made with another model: predicting again", flush=True)
        output.remove()


def format_result(result: PipelineResult) -> str:
    """The run's verdict: each model's micro-F1 against the baseline, and where things are."""
    from poster_ray.evaluate import format_verdict

    lines = ["\n== done in " + f"{result.seconds:.0f} s"]
    for name, headline in result.headlines.items():
        lines.append(
            f"{name}: micro-F1 {headline['micro_f1@calibrated']:.3f} {format_verdict(headline)}"
        )
    lines.append(f"predictions by {result.best} (best on validation)")
    lines.append(f"comparison: {result.comparison}")
    lines.append(f"report: {result.report}")
    lines.append(f"predictions: {result.inference.get('output')}")
    lines.append(f"full logs: {result.logs}")
    return "\n".join(lines)
