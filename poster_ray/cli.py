"""The `poster-ray` command: one subcommand per pipeline stage, each a thin library call.

A stage's options are generated from its settings dataclass (config.py, options.py), so a
flag, its default and its help are written once, in the dataclass; the pipeline's
profiles fill what its command line leaves out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from poster_ray.config import (
    MODEL_NAMES,
    InferSettings,
    PipelineSettings,
    PrepareSettings,
    PreprocessSpec,
    RaySettings,
    ReportSettings,
    TrackingSettings,
    TrainConfig,
    TuneSettings,
)
from poster_ray.errors import (
    INTERRUPT_STATUSES,
    PosterRayError,
    interrupt_behind,
    interrupt_exit_code,
)
from poster_ray.layout import COMPARISON_FILE, ModelDir, RunDir
from poster_ray.options import OneLineParser, SettingsOptions
from poster_ray.pipeline import PROFILES
from poster_ray.storage import Location

# The TrainConfig fields a tuning experiment takes from its command line: the others are
# searched (learning rate, batch size, loss, hparams) or set by the experiment itself
# (epochs, early stopping, monitor, workers per trial, no fine-tuning: tune.trial_base).
TUNED_MODEL_FIELDS = (
    "model",
    "weights",
    "input_size",
    "gpu",
    "cpus_per_worker",
    "precision",
    "threshold_policy",
)
# The pipeline's hardware options, for both models it trains (and its inference).
PIPELINE_HARDWARE_FIELDS = ("workers", "gpu", "cpus_per_worker", "precision")


def cmd_prepare(args: argparse.Namespace) -> None:
    from poster_ray.data.prepare import format_prepare_summary, prepare
    from poster_ray.data.source import resolve_data_dir

    settings: PrepareSettings = args.options["prepare"].build(args)
    summary = prepare(
        resolve_data_dir(settings.data, dict(os.environ)),
        RunDir(settings.out),
        PreprocessSpec(settings.image_size),
        settings.seed,
        settings.limit,
        settings.num_cpus,
    )
    print(format_prepare_summary(summary))
    print(f"\nwrote {settings.out} in {summary['seconds']} s")


def cmd_train(args: argparse.Namespace) -> None:
    from poster_ray import train
    from poster_ray.runtime import init_ray
    from poster_ray.tracking import log_model

    run = existing_run(args.run)
    config: TrainConfig = args.options["train"].build(args)
    init_ray(args.options["ray"].build(args).num_cpus)
    out = train.train(run, args.name or config.model, config)
    print(f"model and curves in {out}")
    evaluate_and_print(out, run)
    log_model(args.options["tracking"].build(args), out, "train")


def evaluate_and_print(model_dir: Location, run: RunDir) -> None:
    from poster_ray.evaluate import evaluate_model_dir, format_headline

    print(format_headline(evaluate_model_dir(model_dir, run)))
    print(f"report: {ModelDir(model_dir).report}; bundle: {ModelDir(model_dir).bundle}")


def cmd_tune(args: argparse.Namespace) -> None:
    from poster_ray.runtime import init_ray
    from poster_ray.tracking import log_model, tune_callbacks
    from poster_ray.tune.experiment import tune_model
    from poster_ray.tune.results import format_tuning_summary

    run = existing_run(args.run)
    base: TrainConfig = args.options["train"].build(args)
    settings: TuneSettings = args.options["tune"].build(args)
    tracking: TrackingSettings = args.options["tracking"].build(args)
    init_ray(args.options["ray"].build(args).num_cpus)
    name = args.name or f"tuned_{base.model}"
    out = tune_model(run, name, base, settings, callbacks=tune_callbacks(tracking))
    print(format_tuning_summary(out))
    evaluate_and_print(out, run)
    log_model(tracking, out, "tune")


def cmd_compare(args: argparse.Namespace) -> None:
    from poster_ray.evaluate import compare_models

    table = compare_models([Location.of(path) for path in args.paths])
    print(table)
    output = Location.of(args.output)
    output.write_text(f"# Model comparison (test split)\n\n{table}")
    print(f"wrote {output}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    model_dir = ModelDir(args.model_dir)
    if not model_dir.model.is_file():
        raise PosterRayError(
            f"{model_dir.root}: no {model_dir.model.name} (expected RUN/models/NAME)"
        )
    evaluate_and_print(model_dir.root, existing_run(args.run or model_dir.root.parent.parent.uri))


def cmd_predict(args: argparse.Namespace) -> None:
    from poster_ray.bundle import load_bundle
    from poster_ray.predict import format_predictions, predict_files

    bundle = load_bundle(args.bundle)
    print(format_predictions(predict_files(bundle, args.posters)))


def cmd_infer(args: argparse.Namespace) -> None:
    from poster_ray.infer import format_inference_summary, run_inference

    settings: InferSettings = args.options["infer"].build(args)
    summary = run_inference(args.bundle, args.input, args.output, **dataclasses.asdict(settings))
    print(format_inference_summary(summary))


def cmd_pipeline(args: argparse.Namespace) -> None:
    """Every stage, end to end, from the profile's settings and the options given."""
    from poster_ray.pipeline import format_result, run_pipeline

    print(format_result(run_pipeline(pipeline_settings(args))))


def cmd_report(args: argparse.Namespace) -> None:
    from poster_ray.report import write_report

    print(f"report: {write_report(args.path, args.options['report'].build(args))}")


def pipeline_settings(args: argparse.Namespace) -> PipelineSettings:
    """The profile's settings with what the `pipeline` command line set."""
    from poster_ray.pipeline import profile_settings

    options = args.options
    return profile_settings(
        args.profile,
        prepare=options["prepare"].given(args),
        hardware=options["hardware"].given(args),
        tune=options["tune"].given(args),
        tracking=options["tracking"].given(args),
        pretrained=args.pretrained,
    )


def existing_run(path: str) -> RunDir:
    """A prepared run, its files checked (readable, not truncated) before Ray starts."""
    from poster_ray.data.tables import check_readable

    run = RunDir(path)
    if not run.manifest.is_file():
        raise PosterRayError(f"{path}: not a prepared run (no {run.manifest.name}); run prepare")
    check_readable(run.manifest)
    run.load_genres()  # each raises one line when its file is damaged
    run.load_spec()
    return run


# ---------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    """The subcommands; each keeps the option groups it added in `args.options`."""
    parser = OneLineParser(prog="poster-ray", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="validate, split and decode the dataset")
    prepare.set_defaults(
        func=cmd_prepare, options={"prepare": SettingsOptions.add(prepare, PrepareSettings)}
    )

    train = commands.add_parser("train", help="train a model with Ray Train")
    train.add_argument("run", help="a prepared run directory")
    train.add_argument("--name", help="run name (default: the model name); reuse it to resume")
    train.set_defaults(
        func=cmd_train,
        options={
            "train": SettingsOptions.add(train, TrainConfig),
            "ray": SettingsOptions.add(train, RaySettings),
            "tracking": SettingsOptions.add(train, TrackingSettings),
        },
    )

    tune = commands.add_parser(
        "tune", help="search hyperparameters with Ray Tune; rerun the same command to resume"
    )
    tune.add_argument("run", help="a prepared run directory")
    tune.add_argument("--name", help="experiment and model name (default: tuned_MODEL)")
    tune.set_defaults(
        func=cmd_tune,
        options={
            "train": SettingsOptions.add(tune, TrainConfig, only=TUNED_MODEL_FIELDS),
            "tune": SettingsOptions.add(tune, TuneSettings),
            "ray": SettingsOptions.add(tune, RaySettings),
            "tracking": SettingsOptions.add(tune, TrackingSettings),
        },
    )

    compare = commands.add_parser(
        "compare", help="one table of evaluated models beside the trivial baselines"
    )
    compare.add_argument("paths", nargs="+", help="model dirs (RUN/models/NAME) or whole runs")
    compare.add_argument("--output", default=COMPARISON_FILE, help="Markdown file to write")
    compare.set_defaults(func=cmd_compare)

    evaluate = commands.add_parser("evaluate", help="test-split metrics beside baselines")
    evaluate.add_argument("model_dir", help="RUN/models/NAME, as written by train")
    evaluate.add_argument("--run", help="the prepared run (default: two folders up)")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="top-3 genres of single posters")
    predict.add_argument("bundle", help="a model bundle directory (RUN/models/NAME/bundle)")
    predict.add_argument("posters", nargs="+", help="poster image files")
    predict.set_defaults(func=cmd_predict)

    infer = commands.add_parser("infer", help="bulk predictions to Parquet; rerun to resume")
    infer.add_argument("bundle", help="a model bundle folder or URI (RUN/models/NAME/bundle)")
    infer.add_argument(
        "--input",
        required=True,
        help="a folder, glob, text file of paths or Parquet file; local or a URI (s3://...)",
    )
    infer.add_argument("--output", required=True, help="folder or URI for part-*.parquet")
    infer.set_defaults(func=cmd_infer, options={"infer": SettingsOptions.add(infer, InferSettings)})

    report = commands.add_parser(
        "report",
        help="an HTML page of a run, or a gallery of a bulk inference job's predictions",
    )
    report.add_argument("path", help="a run directory, or a bulk inference output folder")
    report.set_defaults(
        func=cmd_report, options={"report": SettingsOptions.add(report, ReportSettings)}
    )

    pipeline = commands.add_parser(
        "pipeline",
        help="run every stage end to end",
        description="Every stage end to end; what the options leave out, the profile sets.",
    )
    pipeline.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="quick",
        help="quick: minutes on a laptop; full: every poster; tiny: a smoke test",
    )
    pipeline.add_argument(
        "--pretrained",
        choices=[name for name in MODEL_NAMES if name != "custom_cnn"],
        help="the pretrained backbone (default: the profile's EfficientNet-Lite)",
    )
    pipeline.set_defaults(
        func=cmd_pipeline,
        options={
            "prepare": SettingsOptions.add(pipeline, PrepareSettings, show_defaults=False),
            "hardware": SettingsOptions.add(
                pipeline, TrainConfig, only=PIPELINE_HARDWARE_FIELDS, show_defaults=False
            ),
            "tune": SettingsOptions.add(pipeline, TuneSettings, show_defaults=False),
            "tracking": SettingsOptions.add(pipeline, TrackingSettings),
        },
    )
    return parser


# What an interrupted command leaves, and how it carries on: the line Ctrl-C (or
# SIGTERM) prints.
INTERRUPTED = {
    "prepare": "the run is as it was before this prepare; the same command starts it again",
    "train": "every finished epoch is checkpointed under RUN/ray/NAME; the same command "
    "resumes after the last one",
    "tune": "finished trials are saved under RUN/ray/NAME; the same command resumes the experiment",
    "infer": "committed parts stay in the output folder; the same command runs only the "
    "missing chunks",
    "pipeline": "every finished stage is kept; the same command resumes where it stopped",
}
NOTHING_WRITTEN = "nothing was written; run the command again"


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user's error or an interrupt is one line on stderr.

    Exit status: 0 done, 2 a usage error (a flag, file or folder to fix), 1 a failed
    run, 130 Ctrl-C, 143 SIGTERM."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PosterRayError as error:
        print(f"poster-ray: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        return stopped(args.command, interrupt)
    except Exception as error:
        if (interrupt := interrupt_behind(error)) is None:
            raise
        return stopped(args.command, interrupt)
    return 0


def stopped(command: str, interrupt: KeyboardInterrupt) -> int:
    """The one line of an interrupted command; its exit status."""
    left = INTERRUPTED.get(command, NOTHING_WRITTEN)
    print(f"poster-ray: interrupted: {left}", file=sys.stderr, flush=True)
    return interrupt_exit_code(interrupt)


def run() -> None:
    """The `poster-ray` command: main's status as the process's exit status.

    After an interrupt the process ends at once with its status (130 or 143), without
    `ray.shutdown()`: the interrupt stops the main thread while Ray Data's threads still
    run, and one that touches Ray after the shutdown makes Ray's core worker end the
    process with status 1 ("The core worker has already been shutdown ... The process
    will exit"; one stop in two on a loaded machine). The run's Ray ends with the
    process: its GCS and raylet by the kernel's fate sharing, the rest by the reaper
    (runtime.start_reaper), and a cluster's Ray drops a dead driver's job."""
    status = main()
    if status in INTERRUPT_STATUSES:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
