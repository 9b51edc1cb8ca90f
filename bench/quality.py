"""Model quality on the real dataset: every row of the README's results table, each from
one `poster-ray` command, all scored by the same evaluation on the same test split.

Runs the commands one after the other (a model whose metrics.json exists is not
trained again, so an interrupted run resumes), times each, and writes the table with
the trivial baselines and the command of every row.

    python bench/quality.py RUN_DIR [--data ../shared/datasets/movie-posters] [--models NAME ...]

The `vs baseline` column is the calibrated micro-F1 minus "always Drama, Comedy"'s with
its paired bootstrap interval over the test posters (poster_ray.verdict).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from poster_ray.layout import ModelDir, RunDir
from poster_ray.storage import Location
from poster_ray.verdict import format_interval

# (model name, `poster-ray` arguments after the run directory); the report's CNN first.
MODELS = [
    ("custom_cnn", ["train", "--model", "custom_cnn", "--epochs", "15"]),
    ("efficientnet_lite0", ["train", "--model", "efficientnet_lite0", "--epochs", "40"]),
    *(
        (
            f"efficientnet_lite0_{pooling.replace('+', '_')}",
            ["train", "--model", "efficientnet_lite0", "--epochs", "40", "--pooling", pooling],
        )
        for pooling in ("max", "gem", "avg+max")
    ),
    # The head on 4 views of each training poster (config.POSTER_VIEWS), evaluated on the
    # poster alone, then averaged over its first 2 and 4 views (test-time augmentation).
    *(
        (
            f"efficientnet_lite0_views4{f'_tta{test}' if test > 1 else ''}",
            ["train", "--model", "efficientnet_lite0", "--epochs", "40", "--views", "4"]
            + ["--test-views", str(test)],
        )
        for test in (1, 2, 4)
    ),
    ("efficientnet_lite1", ["train", "--model", "efficientnet_lite1", "--epochs", "40"]),
    # Several backbones under one head, every one at Lite0's 224 px, average-pooled.
    *(
        (
            f"efficientnet_lite0_{'_'.join(name[-5:] for name in more)}",
            ["train", "--model", "efficientnet_lite0", "--epochs", "40"]
            + ["--more-backbones", json.dumps(more)],
        )
        for more in (["efficientnet_lite2"], ["efficientnet_lite1", "efficientnet_lite2"])
    ),
    ("efficientnet_lite2", ["train", "--model", "efficientnet_lite2", "--epochs", "40"]),
    *(
        (
            f"efficientnet_lite2_{loss}",
            ["train", "--model", "efficientnet_lite2", "--epochs", "40", "--loss", loss],
        )
        for loss in ("weighted_bce", "focal", "asymmetric")
    ),
    (
        "tuned_efficientnet_lite2",
        ["tune", "--model", "efficientnet_lite2", "--trials", "12", "--max-epochs", "40"],
    ),
    (
        "efficientnet_lite0_fine_tuned",
        ["train", "--model", "efficientnet_lite0", "--epochs", "40", "--fine-tune-blocks", "2"],
    ),
    # Longer and deeper: the top 6 blocks, the backbone at a tenth of the head's rate,
    # early stopping on validation PR-AUC, its best epoch exported.
    (
        "efficientnet_lite0_fine_tuned_6",
        ["train", "--model", "efficientnet_lite0", "--epochs", "40", "--monitor", "val_pr_auc"]
        + ["--fine-tune-blocks", "6", "--fine-tune-epochs", "8"]
        + ["--fine-tune-learning-rate", "3e-4", "--fine-tune-backbone-rate", "0.1"],
    ),
    # The whole backbone but its stem (17 blocks), for as long as validation PR-AUC keeps
    # improving: in bfloat16, where the CPU has it natively.
    (
        "efficientnet_lite0_fine_tuned_all",
        ["train", "--model", "efficientnet_lite0", "--epochs", "40", "--monitor", "val_pr_auc"]
        + ["--fine-tune-blocks", "17", "--fine-tune-epochs", "12"]
        + ["--fine-tune-learning-rate", "3e-4", "--fine-tune-backbone-rate", "0.1"],
    ),
    # The same recipe on Lite2, the backbone whose frozen head has the best macro-F1, at
    # Lite0's 224 px (its native 260 px has 1.35x the pixels), beside its own
    # frozen head; all 21 blocks and its head convolution (22), at most 6 epochs.
    (
        "efficientnet_lite2_224",
        ["train", "--model", "efficientnet_lite2", "--input-size", "224", "--epochs", "40"]
        + ["--monitor", "val_pr_auc"],
    ),
    (
        "efficientnet_lite2_224_fine_tuned_all",
        ["train", "--model", "efficientnet_lite2", "--input-size", "224", "--epochs", "40"]
        + ["--monitor", "val_pr_auc", "--fine-tune-blocks", "22", "--fine-tune-epochs", "6"]
        + ["--fine-tune-learning-rate", "3e-4", "--fine-tune-backbone-rate", "0.1"],
    ),
]
COLUMNS = (
    ("micro-F1", "test@calibrated", ("micro", "f1")),
    ("macro-F1", "test@calibrated", ("macro_f1_present",)),
    ("mAP", "test@calibrated", ("map",)),
    ("ROC-AUC", "test@calibrated", ("roc_auc",)),
    ("Hamming @0.5", "test@0.5", ("hamming_loss",)),
    ("Hamming @cal", "test@calibrated", ("hamming_loss",)),
    ("val micro-F1", "val@calibrated", ("micro", "f1")),
    ("val mAP", "val@calibrated", ("map",)),
)


def poster_ray(*argv: str) -> float:
    """Run one command, its output going to ours; returns its wall time."""
    started = time.perf_counter()
    subprocess.run([Path(sys.executable).parent / "poster-ray", *argv], check=True)
    return time.perf_counter() - started


def lookup(scored: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        scored = scored[key]
    return scored


def table_row(name: str, scores: list[float | None], extra: list[str]) -> str:
    cells = [f"{score:.3f}" if score is not None else "" for score in scores]
    return "| " + " | ".join([name, *cells, *extra]) + " |"


def model_row(model_dir: ModelDir, wall_s: float | None, command: str) -> tuple[str, dict]:
    scored = model_dir.metrics.read_json()
    history = model_dir.history.read_json()
    config = model_dir.train_config.read_json()
    if config.get("fine_tune_blocks"):  # the fine-tuning epochs, on posters, not the head's
        history = history[-config["fine_tune_epochs"] :]
    rates = [epoch["train_images_per_s"] for epoch in history if "train_images_per_s" in epoch]
    values = {title: lookup(scored[split], path) for title, split, path in COLUMNS}
    values["train img/s"] = statistics.median(rates) if rates else None
    versus = scored.get("versus_baseline", {}).get("model @ calibrated")
    values["vs baseline"] = versus
    extra = [
        f"{format_interval(versus)} {versus['verdict']}" if versus else "",
        f"{wall_s:.0f}" if wall_s else "",
        f"{values['train img/s']:.0f}" if rates else "",
        f"`{command}`",
    ]
    return table_row(model_dir.name, [values[title] for title, _, _ in COLUMNS], extra), values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="the run directory (prepared here when it is not yet)")
    parser.add_argument("--data", default="../shared/datasets/movie-posters")
    parser.add_argument("--image-size", type=int, default=128, help="of the CNN")
    parser.add_argument("--out", default="bench/results/quality")
    parser.add_argument(
        "--models", nargs="+", choices=[name for name, _ in MODELS], help="only these rows"
    )
    args = parser.parse_args()
    run = RunDir(args.run)
    saved = Location.of(args.out + ".json")
    results = saved.read_json() if saved.is_file() else {}
    if not run.manifest.is_file():
        prepare = [
            "prepare",
            "--data",
            args.data,
            "--out",
            run.root.uri,
            "--image-size",
            str(args.image_size),
        ]
        results["prepare"] = {
            "wall_s": poster_ray(*prepare),
            "command": "poster-ray " + " ".join(prepare),
        }
    lines = []
    for name, argv in MODELS:
        if args.models and name not in args.models:
            continue
        command = ["poster-ray", argv[0], run.root.uri, *argv[1:], "--name", name]
        model_dir = run.model(name)
        if not model_dir.metrics.is_file():
            results[name] = {"wall_s": poster_ray(*command[1:])}
        row, values = model_row(model_dir, results.get(name, {}).get("wall_s"), shlex.join(command))
        results.setdefault(name, {}).update(values, command=shlex.join(command))
        lines.append(row)
        saved.write_json(results)
    first = next(name for name, _ in MODELS if not args.models or name in args.models)
    baselines = run.model(first).metrics.read_json()["baselines"]
    for name, scored in baselines.items():
        scores = [
            lookup(scored, path) if split != "val@calibrated" else None
            for _, split, path in COLUMNS
        ]
        lines.append(table_row(f"baseline: {name}", scores, ["", "", "", ""]))
    header = [
        "model",
        *(title for title, _, _ in COLUMNS),
        "vs baseline [95%]",
        "wall s",
        "train img/s",
        "command",
    ]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header), *lines])
    Location.of(args.out + ".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
