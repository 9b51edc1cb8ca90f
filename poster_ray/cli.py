"""The `poster-ray` command: one subcommand per pipeline stage, each a thin library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from poster_ray.config import (
    MODEL_NAMES,
    MONITORS,
    SEARCHERS,
    PreprocessSpec,
    RunDir,
    TrainConfig,
    TuneSettings,
)
from poster_ray.errors import PosterRayError


def cmd_prepare(args: argparse.Namespace) -> None:
    from poster_ray import data

    data_dir = args.data_dir = data.resolve_data_dir(args.data, dict(os.environ))
    summary = data.prepare(
        data_dir,
        RunDir(Path(args.out)),
        PreprocessSpec(args.image_size),
        args.seed,
        args.limit,
        args.num_cpus,
    )
    print(data.format_summary(summary))
    print(f"\nwrote {args.out} in {summary['seconds']} s")


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    try:
        hparams = json.loads(args.hparams)
    except json.JSONDecodeError as error:
        raise PosterRayError(f"--hparams is not a JSON object: {error}") from None
    return TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        workers=args.workers,
        gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        mixed_precision=args.mixed_precision,
        early_stopping=args.early_stopping,
        weights=args.weights,
        hparams=hparams,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from poster_ray import train
    from poster_ray.runtime import init_ray

    run = existing_run(args.run)
    init_ray(args.num_cpus)
    out = train.train(run, args.name or args.model, train_config_from(args))
    print(f"model and curves in {out}")
    evaluate_and_print(out, run)


def evaluate_and_print(model_dir: Path, run: RunDir) -> None:
    from poster_ray.evaluate import evaluate_model_dir, format_headline

    print(format_headline(evaluate_model_dir(model_dir, run)))
    print(f"report: {model_dir / 'report.md'}; bundle: {model_dir / 'bundle'}")


def cmd_tune(args: argparse.Namespace) -> None:
    from poster_ray import tune
    from poster_ray.runtime import init_ray

    run = existing_run(args.run)
    settings = TuneSettings(
        trials=args.trials,
        max_epochs=args.max_epochs,
        searcher=args.searcher,
        objective=args.objective,
        time_budget_s=args.time_budget,
        concurrency=args.concurrency,
        grace_period=args.grace_period,
        seed=args.seed,
    )
    base = TrainConfig(
        model=args.model,
        workers=args.workers_per_trial,
        gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        mixed_precision=args.mixed_precision,
        weights=args.weights,
    )
    init_ray(args.num_cpus)
    out = tune.tune_model(run, args.name or f"tuned_{args.model}", base, settings)
    print(tune.format_summary(out))
    evaluate_and_print(out, run)


def cmd_compare(args: argparse.Namespace) -> None:
    from poster_ray.evaluate import compare_models

    table = compare_models([Path(path) for path in args.paths])
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# Model comparison (test split)\n\n{table}")
    print(f"wrote {output}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    model_dir = Path(args.model_dir)
    if not (model_dir / "model.keras").is_file():
        raise PosterRayError(f"{model_dir}: no model.keras (expected RUN/models/NAME)")
    evaluate_and_print(model_dir, existing_run(args.run or str(model_dir.parent.parent)))


def cmd_predict(args: argparse.Namespace) -> None:
    from poster_ray.bundle import load_bundle
    from poster_ray.predict import format_predictions, predict_files

    bundle = load_bundle(Path(args.bundle))
    print(format_predictions(predict_files(bundle, args.posters)))


def cmd_infer(args: argparse.Namespace) -> None:
    from poster_ray.infer import format_summary, run_inference

    summary = run_inference(
        Path(args.bundle),
        args.input,
        Path(args.output),
        workers=args.workers,
        gpu=args.gpu,
        batch_size=args.batch_size,
        all_probabilities=args.all_probabilities,
        num_cpus=args.num_cpus,
    )
    print(format_summary(summary))


def existing_run(path: str) -> RunDir:
    run = RunDir(Path(path))
    if not run.manifest.is_file():
        raise PosterRayError(f"{path}: not a prepared run (no manifest.parquet); run prepare")
    return run


# The quick profile: a sample of posters, smaller images, a few epochs, so that the whole
# pipeline runs in minutes on a 2-core laptop; full is the real thing.
PROFILES = {
    "quick": {
        "limit": 1500,
        "image_size": 128,
        "epochs": 4,
        "workers": 2,
        "mixed_precision": True,
        "trials": 3,
        "max_epochs": 2,
    },
    "full": {
        "limit": None,
        "image_size": 250,
        "epochs": 30,
        "workers": 2,
        "mixed_precision": True,
        "trials": 12,
        "max_epochs": 10,
    },
}


def cmd_pipeline(args: argparse.Namespace) -> None:
    """Every stage, end to end: prepare, train, evaluate, tune, compare, predict samples,
    bulk inference."""
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:  # not given on the command line
            setattr(args, key, value)
    cmd_prepare(args)
    args.run, args.name, args.hparams = args.out, None, "{}"
    cmd_train(args)
    # Tune the same model (its first trial is the untuned default), then compare.
    args.workers_per_trial, args.concurrency, args.grace_period = args.workers, 1, 1
    args.searcher, args.objective, args.time_budget = "tpe", TuneSettings.objective, None
    cmd_tune(args)
    args.paths, args.output = [args.out], str(Path(args.out, "comparison.md"))
    cmd_compare(args)
    args.bundle = str(Path(args.out, "models", args.model, "bundle"))
    args.posters = sorted(str(path) for path in Path(args.data_dir, "samples").glob("*.jpg"))
    if args.posters:
        cmd_predict(args)
    # Bulk inference over every prepared poster (the manifest has a path column).
    args.input, args.output = (
        str(RunDir(Path(args.out)).manifest),
        str(Path(args.out, "predictions")),
    )
    args.workers, args.batch_size, args.all_probabilities = 1, 64, False
    cmd_infer(args)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset folder (train.csv + Images/); default $POSTER_DATA")
    parser.add_argument("--out", default="runs/latest", help="run directory to write")
    parser.add_argument("--image-size", type=int, default=PreprocessSpec.image_size)
    parser.add_argument("--seed", type=int, default=42, help="split seed")
    parser.add_argument("--limit", type=int, help="use a random sample of this many posters")
    parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def add_train_args(parser: argparse.ArgumentParser, include_num_cpus: bool = True) -> None:
    defaults = TrainConfig()
    parser.add_argument("--model", choices=MODEL_NAMES, default=defaults.model)
    parser.add_argument("--name", help="run name (default: the model name); reuse it to resume")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--cpus-per-worker", type=float, help="default: all CPUs but one, shared")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--mixed-precision", action="store_true", help="bfloat16 on CPU, float16 on GPU"
    )
    parser.add_argument(
        "--early-stopping",
        type=int,
        default=defaults.early_stopping,
        help="patience in epochs on val_loss, keeping the best epoch; 0 = off",
    )
    parser.add_argument(
        "--weights", default=defaults.weights, help="vgg16: none, imagenet or a .h5 file"
    )
    parser.add_argument("--hparams", default="{}", help="model hyperparameters as JSON")
    if include_num_cpus:
        parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def add_tune_args(parser: argparse.ArgumentParser) -> None:
    defaults = TuneSettings()
    parser.add_argument("run", help="a prepared run directory")
    parser.add_argument("--model", choices=MODEL_NAMES, default=TrainConfig.model)
    parser.add_argument("--name", help="experiment and model name (default: tuned_MODEL)")
    parser.add_argument("--trials", type=int, default=defaults.trials)
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument(
        "--searcher",
        choices=SEARCHERS,
        default=defaults.searcher,
        help="tpe: Optuna TPE; gp: Gaussian process (needs the bayesopt extra)",
    )
    parser.add_argument("--objective", choices=list(MONITORS), default=defaults.objective)
    parser.add_argument("--workers-per-trial", type=int, default=1)
    parser.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="trials at once"
    )
    parser.add_argument("--time-budget", type=float, help="seconds; then the best so far wins")
    parser.add_argument(
        "--grace-period",
        type=int,
        default=defaults.grace_period,
        help="epochs before ASHA may stop a trial",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="searcher seed")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--cpus-per-worker", type=float, help="default: all CPUs but one, shared")
    parser.add_argument(
        "--mixed-precision", action="store_true", help="bfloat16 on CPU, float16 on GPU"
    )
    parser.add_argument(
        "--weights", default=TrainConfig.weights, help="vgg16: none, imagenet or a .h5 file"
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poster-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="validate, split and decode the dataset")
    add_data_args(prepare)
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train a model with Ray Train")
    train.add_argument("run", help="a prepared run directory")
    add_train_args(train)
    train.set_defaults(func=cmd_train)

    tune = commands.add_parser(
        "tune", help="search hyperparameters with Ray Tune; rerun the same command to resume"
    )
    add_tune_args(tune)
    tune.set_defaults(func=cmd_tune)

    compare = commands.add_parser(
        "compare", help="one table of evaluated models beside the trivial baselines"
    )
    compare.add_argument("paths", nargs="+", help="model dirs (RUN/models/NAME) or whole runs")
    compare.add_argument("--output", default="comparison.md", help="Markdown file to write")
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
    infer.add_argument("bundle", help="a model bundle directory (RUN/models/NAME/bundle)")
    infer.add_argument(
        "--input", required=True, help="a folder, a glob, a text file of paths, or a Parquet file"
    )
    infer.add_argument("--output", required=True, help="folder for part-*.parquet")
    infer.add_argument("--workers", type=int, default=1, help="model actors")
    infer.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    infer.add_argument("--batch-size", type=int, default=64, help="posters per model call")
    infer.add_argument(
        "--all-probabilities", action="store_true", help="also write every genre's probability"
    )
    infer.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    infer.set_defaults(func=cmd_infer)

    pipeline = commands.add_parser("pipeline", help="run every stage end to end")
    add_data_args(pipeline)
    add_train_args(pipeline, include_num_cpus=False)
    pipeline.add_argument("--profile", choices=list(PROFILES), default="quick")
    pipeline.add_argument("--trials", type=int, help="tuning trials")
    pipeline.add_argument("--max-epochs", type=int, help="epochs per tuning trial, at most")
    pipeline.set_defaults(func=cmd_pipeline, **dict.fromkeys(PROFILES["quick"]))
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
