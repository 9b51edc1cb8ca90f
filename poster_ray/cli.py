"""The `poster-ray` command: one subcommand per pipeline stage, each a thin library call.

Options are named after the settings dataclasses' fields (TrainConfig, TuneSettings) and
default to "not given", so a stage's defaults live in one place: the dataclass, or the
pipeline profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from poster_ray.config import (
    LOSSES,
    MODEL_NAMES,
    MONITORS,
    SEARCHERS,
    PreprocessSpec,
    TrainConfig,
    TuneSettings,
)
from poster_ray.errors import PosterRayError
from poster_ray.layout import COMPARISON_FILE, ModelDir, RunDir
from poster_ray.resources import PRECISIONS
from poster_ray.storage import Location

NOT_GIVEN = argparse.SUPPRESS  # an option left out sets no attribute at all


def given(args: argparse.Namespace, settings_class: type) -> dict:
    """The fields of `settings_class` that the command line set."""
    fields = {field.name for field in dataclasses.fields(settings_class)}
    values = {name: value for name, value in vars(args).items() if name in fields}
    if "hparams" in values:
        try:
            values["hparams"] = json.loads(values["hparams"])
        except json.JSONDecodeError as error:
            raise PosterRayError(f"--hparams is not a JSON object: {error}") from None
    return values


def cmd_prepare(args: argparse.Namespace) -> None:
    from poster_ray.data.prepare import format_prepare_summary, prepare
    from poster_ray.data.source import resolve_data_dir

    summary = prepare(
        resolve_data_dir(args.data, dict(os.environ)),
        RunDir(args.out),
        PreprocessSpec(args.image_size),
        args.split_seed,
        args.limit,
        args.num_cpus,
    )
    print(format_prepare_summary(summary))
    print(f"\nwrote {args.out} in {summary['seconds']} s")


def cmd_train(args: argparse.Namespace) -> None:
    from poster_ray import train
    from poster_ray.runtime import init_ray

    run = existing_run(args.run)
    config = TrainConfig(**given(args, TrainConfig))
    init_ray(args.num_cpus)
    out = train.train(run, args.name or config.model, config)
    print(f"model and curves in {out}")
    evaluate_and_print(out, run)


def evaluate_and_print(model_dir: Location, run: RunDir) -> None:
    from poster_ray.evaluate import evaluate_model_dir, format_headline

    print(format_headline(evaluate_model_dir(model_dir, run)))
    print(f"report: {ModelDir(model_dir).report}; bundle: {ModelDir(model_dir).bundle}")


def cmd_tune(args: argparse.Namespace) -> None:
    from poster_ray import tune
    from poster_ray.runtime import init_ray

    run = existing_run(args.run)
    base = TrainConfig(**given(args, TrainConfig))
    settings = TuneSettings(**given(args, TuneSettings))
    init_ray(args.num_cpus)
    out = tune.tune_model(run, args.name or f"tuned_{base.model}", base, settings)
    print(tune.format_summary(out))
    evaluate_and_print(out, run)


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

    summary = run_inference(
        args.bundle,
        args.input,
        args.output,
        workers=args.workers,
        gpu=args.gpu,
        batch_size=args.batch_size,
        all_probabilities=args.all_probabilities,
        num_cpus=args.num_cpus,
        precision=args.precision,
        cpus_per_worker=args.cpus_per_worker,
    )
    print(format_inference_summary(summary))


def cmd_pipeline(args: argparse.Namespace) -> None:
    """Every stage, end to end, from the profile's settings and the options given."""
    from poster_ray.pipeline import format_result, profile_settings, run_pipeline

    settings = profile_settings(
        args.profile,
        args.out,
        data=args.data,
        image_size=args.image_size,
        limit=args.limit,
        seed=args.split_seed,
        num_cpus=args.num_cpus,
    )
    hardware = given(args, TrainConfig)  # --precision, --workers, --gpu, --cpus-per-worker
    pretrained = {"model": args.pretrained} if args.pretrained else {}
    settings = dataclasses.replace(
        settings,
        cnn=dataclasses.replace(settings.cnn, **hardware),
        pretrained=dataclasses.replace(settings.pretrained, **hardware, **pretrained),
        tune=dataclasses.replace(settings.tune, **given(args, TuneSettings)),
    )
    print(format_result(run_pipeline(settings)))


def existing_run(path: str) -> RunDir:
    run = RunDir(path)
    if not run.manifest.is_file():
        raise PosterRayError(f"{path}: not a prepared run (no {run.manifest.name}); run prepare")
    return run


# ---------------------------------------------------------------- arguments


def add_data_args(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Prepare's options; `defaults=False` leaves unset ones to a pipeline profile."""
    parser.add_argument("--data", help="dataset folder (train.csv + Images/); default $POSTER_DATA")
    parser.add_argument("--out", default="runs/latest", help="run directory to write")
    parser.add_argument(
        "--image-size", type=int, default=PreprocessSpec.image_size if defaults else None
    )
    parser.add_argument("--seed", dest="split_seed", type=int, default=42, help="split seed")
    parser.add_argument("--limit", type=int, help="use a random sample of this many posters")
    add_num_cpus(parser)


def add_num_cpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """What trains and on what, shared by train and tune."""
    defaults = TrainConfig()
    parser.add_argument(
        "--model", choices=MODEL_NAMES, default=NOT_GIVEN, help=f"default {defaults.model}"
    )
    parser.add_argument(
        "--weights",
        default=NOT_GIVEN,
        help="pretrained models: imagenet (default), none or a weights file",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=NOT_GIVEN,
        help="pretrained models: poster size (default: the backbone's native resolution)",
    )
    add_hardware_args(parser)


def add_hardware_args(parser: argparse.ArgumentParser) -> None:
    """Where and in what precision training runs."""
    parser.add_argument("--gpu", action="store_true", default=NOT_GIVEN, help="a GPU per worker")
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=NOT_GIVEN,
        help="default: an equal share of each node's CPUs",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=NOT_GIVEN,
        help="auto (default): float16 on GPUs, bfloat16 on CPUs with it natively, else float32",
    )


def add_workers_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=NOT_GIVEN,
        help="training workers (default: one per node with CPUs, one per GPU with --gpu)",
    )


def add_train_args(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    add_model_args(parser)
    add_workers_arg(parser)
    for option, kind in (
        ("epochs", int),
        ("batch_size", int),
        ("learning_rate", float),
        ("fine_tune_blocks", int),
        ("fine_tune_epochs", int),
        ("fine_tune_learning_rate", float),
    ):
        parser.add_argument(
            f"--{option.replace('_', '-')}",
            type=kind,
            default=NOT_GIVEN,
            help=f"default {getattr(defaults, option)}" + (" (global)" * (option == "batch_size")),
        )
    parser.add_argument(
        "--early-stopping",
        type=int,
        default=NOT_GIVEN,
        help=f"patience in epochs on --monitor, keeping the best epoch; 0 = off "
        f"(default {defaults.early_stopping})",
    )
    parser.add_argument(
        "--monitor", choices=list(MONITORS), default=NOT_GIVEN, help=f"default {defaults.monitor}"
    )
    parser.add_argument(
        "--loss", choices=LOSSES, default=NOT_GIVEN, help=f"default {defaults.loss}"
    )
    parser.add_argument("--hparams", default=NOT_GIVEN, help="model hyperparameters as JSON")


def add_tune_args(parser: argparse.ArgumentParser) -> None:
    defaults = TuneSettings()
    parser.add_argument("--trials", type=int, default=NOT_GIVEN, help=f"default {defaults.trials}")
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=NOT_GIVEN,
        help=f"epochs per trial, at most (default {defaults.max_epochs})",
    )
    parser.add_argument(
        "--searcher",
        choices=SEARCHERS,
        default=NOT_GIVEN,
        help="tpe (default): Optuna TPE; gp: Gaussian process (needs the bayesopt extra)",
    )
    parser.add_argument(
        "--objective",
        choices=list(MONITORS),
        default=NOT_GIVEN,
        help=f"default {defaults.objective}",
    )
    parser.add_argument(
        "--concurrency", type=int, default=NOT_GIVEN, help="trials at once (default 1)"
    )
    parser.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=float,
        default=NOT_GIVEN,
        help="seconds; then the best so far wins",
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        default=NOT_GIVEN,
        help=f"epochs before ASHA may stop a trial (default {defaults.grace_period})",
    )
    parser.add_argument(
        "--searcher-seed", dest="seed", type=int, default=NOT_GIVEN, help="default 0"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poster-ray", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="validate, split and decode the dataset")
    add_data_args(prepare)
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train a model with Ray Train")
    train.add_argument("run", help="a prepared run directory")
    train.add_argument("--name", help="run name (default: the model name); reuse it to resume")
    add_train_args(train)
    add_num_cpus(train)
    train.set_defaults(func=cmd_train)

    tune = commands.add_parser(
        "tune", help="search hyperparameters with Ray Tune; rerun the same command to resume"
    )
    tune.add_argument("run", help="a prepared run directory")
    tune.add_argument("--name", help="experiment and model name (default: tuned_MODEL)")
    add_model_args(tune)
    tune.add_argument(
        "--workers-per-trial",
        dest="workers",
        type=int,
        default=1,
        help="Ray Train workers per trial (default 1)",
    )
    add_tune_args(tune)
    add_num_cpus(tune)
    tune.set_defaults(func=cmd_tune)

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
    infer.add_argument(
        "--workers", type=int, help="model actors (default: 1, growing to one per node or GPU)"
    )
    infer.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    infer.add_argument("--batch-size", type=int, default=64, help="posters per model call")
    infer.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: float16 on a GPU, bfloat16 on a CPU that has it natively, else float32",
    )
    infer.add_argument(
        "--cpus-per-worker", type=float, help="CPUs each model actor reserves (default: planned)"
    )
    infer.add_argument(
        "--all-probabilities", action="store_true", help="also write every genre's probability"
    )
    add_num_cpus(infer)
    infer.set_defaults(func=cmd_infer)

    pipeline = commands.add_parser("pipeline", help="run every stage end to end")
    pipeline.add_argument(
        "--profile",
        choices=["quick", "full", "tiny"],
        default="quick",
        help="quick: minutes on a laptop; full: every poster; tiny: a smoke test",
    )
    add_data_args(pipeline, defaults=False)
    pipeline.add_argument(
        "--pretrained",
        choices=[name for name in MODEL_NAMES if name != "custom_cnn"],
        help="the pretrained backbone (default: the profile's EfficientNet-Lite)",
    )
    add_hardware_args(pipeline)
    add_workers_arg(pipeline)
    add_tune_args(pipeline)
    pipeline.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PosterRayError as error:
        print(f"poster-ray: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("poster-ray: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
