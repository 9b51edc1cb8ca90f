"""The `poster-ray` command: one subcommand per pipeline stage, each a thin library call."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from poster_ray.config import PreprocessSpec, RunDir
from poster_ray.errors import PosterRayError


def cmd_prepare(args: argparse.Namespace) -> None:
    from poster_ray import data
    from poster_ray.runtime import init_ray

    data_dir = data.resolve_data_dir(args.data, dict(os.environ))
    init_ray(args.num_cpus)
    summary = data.prepare(
        data_dir, RunDir(Path(args.out)), PreprocessSpec(args.image_size), args.seed, args.limit
    )
    print(data.format_summary(summary))
    print(f"\nwrote {args.out} in {summary['seconds']} s")


def cmd_pipeline(args: argparse.Namespace) -> None:
    """Every stage that exists, end to end; the quick profile keeps it to minutes."""
    cmd_prepare(args)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset folder (train.csv + Images/); default $POSTER_DATA")
    parser.add_argument("--out", default="runs/latest", help="run directory to write")
    parser.add_argument("--image-size", type=int, default=PreprocessSpec.image_size)
    parser.add_argument("--seed", type=int, default=42, help="split seed")
    parser.add_argument("--limit", type=int, help="use a random sample of this many posters")
    parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poster-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="validate, split and decode the dataset")
    add_data_args(prepare)
    prepare.set_defaults(func=cmd_prepare)

    pipeline = commands.add_parser("pipeline", help="run every stage end to end")
    add_data_args(pipeline)
    pipeline.add_argument("--profile", choices=["quick", "full"], default="quick")
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
