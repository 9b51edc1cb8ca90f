"""Fake finished runs and bulk inference outputs for the report tests: the files the
stages write, with known contents, and no training."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from synthetic import GENRES, genre_colour, make_poster

from poster_ray.infer.output import JOB_FILE, part_name
from poster_ray.infer.rows import rows_table

MODEL = "tiny_model"
THRESHOLD = 0.5
WRONG_GENRE = 2  # the genre the fake model is sure of on poster 1, which has genre 1


def scores(n: int, genres: int) -> dict:
    """A classification_metrics-shaped dict (values made up, shapes real)."""
    block = {"precision": 0.5, "recall": 0.4, "f1": 0.45}
    return {
        "n_samples": n,
        "micro": block,
        "macro": block,
        "weighted": block,
        "samples": block,
        "hamming_loss": 0.1,
        "macro_f1_present": 0.44,
        "micro_ap": 0.5,
        "map": 0.4,
        "roc_auc": 0.7,
        "per_genre": [
            {"genre": genre, "threshold": THRESHOLD, "precision": 0.5, "recall": 0.5,
             "f1": 0.5, "support": 3, "ap": 0.6, "roc_auc": 0.7}
            for genre in GENRES[:genres]
        ],
    }  # fmt: skip


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (60, 40), colour).save(out, "PNG")
    return out.getvalue()


def make_finished_run(root: Path, test_posters: int = 6) -> Path:
    """A run with one evaluated, tuned model and `test_posters` test posters: poster i's
    true genre is GENRES[i % len(GENRES)], and the model gives it 0.9 on poster 0 (most
    right) and 0.05 on poster 1 (most wrong, with 0.95 on WRONG_GENRE)."""
    images = root / "Images"
    images.mkdir(parents=True)
    ids = [f"tt{i:07d}" for i in range(test_posters)]
    labels = np.zeros((test_posters, len(GENRES)), dtype=np.uint8)
    labels[np.arange(test_posters), np.arange(test_posters) % len(GENRES)] = 1
    probabilities = np.full(labels.shape, 0.2, dtype=np.float32)
    probabilities[labels == 1] = 0.6
    probabilities[0] = np.where(labels[0] == 1, 0.9, 0.02)
    probabilities[1] = np.where(labels[1] == 1, 0.05, 0.2)
    probabilities[1, WRONG_GENRE] = 0.95
    for i, poster_id in enumerate(ids):
        make_poster(images / f"{poster_id}.jpg", color=genre_colour(i))
    run = root / "run"
    model = run / "models" / MODEL
    model.mkdir(parents=True)
    pd.DataFrame(
        {"id": ids, "path": [str(images / f"{i}.jpg") for i in ids], "split": "test",
         "labels": list(labels)}
    ).to_parquet(run / "manifest.parquet")  # fmt: skip
    (run / "genres.json").write_text(json.dumps(GENRES))
    (run / "prepare_summary.json").write_text(
        json.dumps(
            {
                "kept": test_posters,
                "data_dir": str(root),
                "splits": {"test": {"posters": test_posters}},
            }
        )
    )
    pd.DataFrame({"id": ids, "probabilities": list(probabilities)}).to_parquet(
        model / "test_predictions.parquet"
    )
    headline = {
        "model": MODEL,
        "test_posters": test_posters,
        "micro_f1@0.5": 0.4,
        "micro_f1@calibrated": 0.45,
        "baseline": "always Drama, Comedy",
        "baseline_micro_f1": 0.41,
        "beats_baseline": True,
        "val_micro_f1": 0.47,
    }
    metrics = {
        "model": MODEL, "genres": GENRES, "thresholds": [THRESHOLD] * len(GENRES),
        "headline": headline, "test@0.5": scores(test_posters, len(GENRES)),
        "test@calibrated": scores(test_posters, len(GENRES)),
        "baselines": {"always Drama, Comedy": scores(test_posters, len(GENRES))},
    }  # fmt: skip
    (model / "metrics.json").write_text(json.dumps(metrics))
    (model / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 0.5}]))
    (model / "curve_loss.png").write_bytes(png((30, 90, 200)))
    (model / "trials.csv").write_text("trial,status,best,learning_rate\n1,completed,0.4,0.001\n")
    (model / "trials.png").write_bytes(png((200, 90, 30)))
    return run


def write_part(out: Path, chunk: int, paths: list[str], errors: list[str]) -> None:
    """One committed part of bulk inference over `paths`: poster i gets genre i % genres
    at 0.9 and the next genre at 0.3 + i / 1000 (so below threshold), the others 0.1;
    a non-empty error makes an error row."""
    count = len(paths)
    probabilities = np.full((count, len(GENRES)), 0.1, dtype=np.float32)
    for i in range(count):
        probabilities[i, i % len(GENRES)] = 0.9 - i / 1000
        probabilities[i, (i + 1) % len(GENRES)] = 0.3
    table = rows_table(
        np.array(paths, dtype=object), np.array(errors, dtype=object), probabilities,
        GENRES, np.full(len(GENRES), THRESHOLD, dtype=np.float32), "hash", False,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / part_name(chunk))
    (out / JOB_FILE).write_text(json.dumps({"bundle_hash": "hash", "chunk_size": count}))


def make_posters(folder: Path, count: int, start: int = 0) -> list[str]:
    """`count` poster files, distinct colours; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        str(make_poster(folder / f"p{i:05d}.jpg", color=genre_colour(i), size=(60, 90)))
        for i in range(start, start + count)
    ]
