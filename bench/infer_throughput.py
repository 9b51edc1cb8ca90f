"""Bulk inference against its bound, side by side on the same cores in one run.

- D, decode only: the pipeline's own decode function (`images.decode_files`: read,
  decode, RGB, resize to the bundle's size) over the real posters in a multiprocessing
  pool of one process per core, pool start-up excluded: decoding with nothing else.
- P, predict only: the model actors' own traced function (`models.inference_function`),
  batch by batch, on posters decoded into memory first, in one fresh process with
  TensorFlow's thread pools sized to every core, per precision. Keras' `model.predict`
  is measured beside it for reference (on the 128 px CNN it is about 15% slower, so a
  bound from it would flatter the pipeline).
- Their bound 1/(1/D + 1/P): the rate if the cores did nothing but decode and predict,
  with perfect sharing between the two.
- End to end: `poster-ray infer` in a fresh process per size and precision, start-up
  (Python, Ray, TensorFlow in the actor, the model) included, over a list file of
  distinct paths (symlinks cycling through the real posters, so the page cache holds
  every file); peak memory summed over the whole process tree (the driver, Ray's own
  processes, decode workers, model actors), sampled every 0.5 s. PSS splits shared
  pages (Ray's object store) between the processes that map them: its sum is the
  honest total.

D and P are measured before and after the end-to-end runs (this machine is shared and
noisy); the bound uses their medians. Wall-clock rates on a shared machine also depend on
what else runs (a process with more threads gets a larger share of contended cores), so
each measurement records the load average and the CPU seconds it used: CPU time per
poster, end to end against decoding plus predicting alone, is the pipeline's efficiency
whatever else ran. Without --bundle, a bundle is built with an untrained head (24 genres
from the dataset's header, thresholds 0.5): the report's custom CNN at --image-size, or
--model's pretrained backbone(s) at their native size. Untrained weights compute exactly
as fast as trained ones.

    python bench/infer_throughput.py --image-size 128 [--sizes 5000 50000]
    python bench/infer_throughput.py --model efficientnet_lite0 \
        --more-backbones efficientnet_lite2 --name efficientnet_lite0_lite2 \
        --sizes 1000 4000 --predict-posters 500
    python bench/infer_throughput.py --bundle RUN/models/NAME/bundle --name NAME
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray

psutil = importlib.import_module("psutil")  # the psutil Ray ships (ray puts it on sys.path)

SAMPLE_EVERY_S = 0.5
DECODE_METHOD = "multiprocessing pool, one process per core, of poster_ray.images.decode_files"
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


# ---------------------------------------------------------------- the machine


def cpu_info() -> dict:
    """lscpu's model name and the flags that decide TensorFlow's fast paths."""
    fields = dict(
        line.split(":", 1) for line in subprocess.check_output(["lscpu"], text=True).splitlines()
    )
    flags = set(fields.get("Flags", "").split())
    return {
        "model_name": fields.get("Model name", "").strip(),
        "cpus": os.cpu_count(),
        "flags": {flag: flag in flags for flag in FLAGS_OF_INTEREST},
    }


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "ray": ray.__version__,
        "tensorflow": importlib.metadata.version("tensorflow"),
    }


def load_average() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------- inputs


def build_bundle(
    model: str, more_backbones: list[str], image_size: int, dataset: Path, folder: Path
) -> Path:
    """An untrained bundle over the dataset's genres, thresholds 0.5: the custom CNN at
    `image_size`, or a transfer model (its pretrained backbones, `more_backbones` joined)
    at its native size under an untrained head. Trained weights compute exactly as fast."""
    from poster_ray import models
    from poster_ray.bundle import write_bundle
    from poster_ray.config import PreprocessSpec
    from poster_ray.data.labels import genres_from_header
    from poster_ray.layout import ModelDir

    with open(dataset / "train.csv", newline="") as file:
        genres = genres_from_header(next(csv.reader(file)))
    model_dir = ModelDir(folder)
    size = models.input_size(model, image_size)
    hparams = {"more_backbones": more_backbones} if more_backbones else {}
    models.build_model(model, len(genres), size, **hparams).save(model_dir.model.local_path)
    config = {"model": model, "more_backbones": more_backbones, "image_size": size}
    config["untrained"] = "head" if models.is_transfer(model) else "all"
    spec = PreprocessSpec(size)
    write_bundle(model_dir.bundle, model_dir.model, genres, spec, [0.5] * len(genres), config, {})
    return model_dir.bundle.local_path


def link_posters(posters: list[Path], count: int, folder: Path) -> Path:
    """A list file of `count` distinct paths: symlinks cycling through the posters."""
    folder.mkdir(parents=True)
    links = []
    for index in range(count):
        link = folder / f"{index:07d}.jpg"
        link.symlink_to(posters[index % len(posters)])
        links.append(str(link))
    list_file = folder.with_suffix(".txt")
    list_file.write_text("\n".join(links) + "\n")
    return list_file


# ---------------------------------------------------------------- D and P


def _decode(paths: list[str], image_size: int) -> tuple[int, float]:
    """Decode `paths`; returns how many decoded and the CPU seconds it took."""
    from poster_ray.config import PreprocessSpec
    from poster_ray.images import decode_files

    started = time.process_time()
    _, errors = decode_files(np.array(paths), PreprocessSpec(image_size))
    return int((errors == "").sum()), time.process_time() - started


def decode_rate(posters: list[Path], image_size: int, count: int) -> dict:
    """Images/s of the decode function alone, one process per core (start-up excluded),
    and its CPU seconds per image."""
    paths = [str(posters[index % len(posters)]) for index in range(count)]
    slices = [paths[start : start + 128] for start in range(0, count, 128)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.starmap(_decode, [(paths[:4], image_size)] * os.cpu_count())  # imports done
        started = time.perf_counter()
        results = pool.starmap(_decode, [(part, image_size) for part in slices])
        elapsed = time.perf_counter() - started
    decoded, cpu_s = (sum(values) for values in zip(*results, strict=True))
    assert decoded == count, f"{count - decoded} posters failed to decode"
    return {
        "images_per_s": round(count / elapsed, 1),
        "cpu_ms_per_image": round(1e3 * cpu_s / count, 3),
    }


def _predict(bundle: str, paths: list[str], precision: str, batch_size: int) -> dict:
    """In a fresh process: TensorFlow threads = every core, then three timed passes over
    the posters of each way to predict (images/s, CPU seconds per image): the traced
    function the model actors call, batch by batch, and Keras' `model.predict`."""
    from poster_ray.resources import configure_tensorflow_threads

    configure_tensorflow_threads(os.cpu_count())
    from poster_ray.bundle import load_bundle
    from poster_ray.images import decode_files
    from poster_ray.infer.actor import model_in_precision
    from poster_ray.models import inference_function

    loaded = load_bundle(bundle)
    model = model_in_precision(loaded.model, precision)
    infer = inference_function(model)
    pixels, _ = decode_files(np.array(paths), loaded.spec)
    ways = {
        "actor_function": lambda: [
            infer(pixels[start : start + batch_size]) for start in range(0, len(pixels), batch_size)
        ],
        "keras_predict": lambda: model.predict(pixels, batch_size=batch_size, verbose=0),
    }
    return timed_passes(ways, len(pixels), passes=3)


def timed_passes(ways: dict, images: int, passes: int) -> dict[str, list[tuple[float, float]]]:
    """Each way to predict once (graphs built), then `passes` timed passes of each,
    interleaved so that a noisy moment hits every way: (images/s, CPU s per image)."""
    runs: dict = {name: [] for name in ways}
    for way in ways.values():
        way()
    for _ in range(passes):
        for name, way in ways.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            way()
            elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
            runs[name].append((images / elapsed, cpu_s / images))
    return runs


def predict_rate(bundle: Path, posters: list[Path], count: int, precision: str, batch: int) -> dict:
    """Images/s of predicting alone on preloaded uint8 posters (the median of three), and
    its CPU seconds per image: with the actors' traced function (P, for the bound) and,
    for reference, with Keras' `model.predict`."""
    paths = [str(path) for path in posters[:count]]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        runs = pool.apply(_predict, (str(bundle), paths, precision, batch))
    medians = {
        name: [statistics.median(values) for values in zip(*measured, strict=True)]
        for name, measured in runs.items()
    }
    rate, cpu_s = medians["actor_function"]
    return {
        "images_per_s": round(rate, 1),
        "cpu_ms_per_image": round(1e3 * cpu_s, 3),
        "keras_predict_images_per_s": round(medians["keras_predict"][0], 1),
    }


# ---------------------------------------------------------------- end to end


class ProcessTree:
    """Peak summed RSS and PSS of a process and all its descendants, and the CPU seconds
    they used (each process's last sample: a worker's final half second can be missed),
    sampled every 0.5 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_rss = self.peak_pss = 0
        self.cpu_s: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_S):
            rss = pss = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    memory = process.memory_full_info()
                    times = process.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # a worker that ended between listing and reading
                rss, pss = rss + memory.rss, pss + memory.pss
                self.cpu_s[process.pid] = times.user + times.system
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def run_infer(bundle: Path, list_file: Path, out: Path, precision: str, extra: list[str]) -> dict:
    """One `poster-ray infer` in a fresh process: its summary, wall time and peak memory."""
    command = [sys.executable, "-m", "poster_ray.cli", "infer", str(bundle)]
    command += ["--input", str(list_file), "--output", str(out), "--precision", precision]
    command += extra
    load_before = load_average()
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:  # not a terminal: a progress line a minute
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        tree = ProcessTree(process.pid)
        code = process.wait()
    tree.stop()
    wall_s = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"poster-ray infer failed ({code}): see {out.with_suffix('.log')}")
    summary = json.loads((out / "_summary.json").read_text())
    if summary["errors"]:
        raise SystemExit(f"{summary['errors']} posters failed: see the error column in {out}")
    return {
        "files": summary["files"],
        "wall_s": round(wall_s, 1),
        "images_per_s": round(summary["files"] / wall_s, 1),
        "precision_used": summary["precision"]["rows"],
        "peak_pss_mb": round(tree.peak_pss / 2**20),
        "peak_rss_mb": round(tree.peak_rss / 2**20),
        "cpu_s": round(sum(tree.cpu_s.values()), 1),
        "load_average_before": round(load_before, 2),
        "command": shlex.join(command),
    }


def agreement(reference: Path, reduced: Path) -> dict:
    """Reduced precision against float32 on the same real posters: the share of posters
    with the same top-1 genre, and the largest difference of the top-1 probability."""
    import pandas as pd

    def rows(folder: Path) -> pd.DataFrame:
        parts = sorted(folder.glob("part-*.parquet"))
        frame = pd.concat(
            pd.read_parquet(part, columns=["path", "top1_genre", "top1_prob"]) for part in parts
        )
        return frame.set_index("path").sort_index()

    ours, theirs = rows(reference), rows(reduced)
    same = ours["top1_genre"] == theirs["top1_genre"]
    return {
        "posters": len(ours),
        "top1_same": round(float(same.mean()), 4),
        "max_top1_prob_diff_where_same": round(
            float((ours["top1_prob"] - theirs["top1_prob"])[same].abs().max()), 4
        ),
    }


# ---------------------------------------------------------------- the report


def compare(result: dict, sizes: list[int], precisions: list[str]) -> dict:
    """The ratios the acceptance criteria name, from the measured figures."""
    small, large = str(min(sizes)), str(max(sizes))
    decode = result["decode_only"]
    report: dict = {}
    for precision in precisions:
        predict = result["predict_only"][precision]
        bound = 1 / (1 / decode["images_per_s"] + 1 / predict["images_per_s"])
        keras_bound = 1 / (1 / decode["images_per_s"] + 1 / predict["keras_predict_images_per_s"])
        cpu_ms = decode["cpu_ms_per_image"] + predict["cpu_ms_per_image"]
        runs = result["end_to_end"][precision]
        report[precision] = {
            "bound_img_s": round(bound, 1),
            "e2e_vs_bound": {size: round(runs[size]["images_per_s"] / bound, 3) for size in runs},
            "bound_with_keras_predict_img_s": round(keras_bound, 1),
            "e2e_vs_bound_with_keras_predict": {
                size: round(runs[size]["images_per_s"] / keras_bound, 3) for size in runs
            },
            "peak_pss_large_vs_small": round(
                runs[large]["peak_pss_mb"] / runs[small]["peak_pss_mb"], 3
            ),
            "hours_for_1M_posters": round(1e6 / runs[large]["images_per_s"] / 3600, 2),
            # Independent of what else ran: CPU time per poster, end to end (start-up
            # included) against decoding plus predicting alone.
            "cpu_ms_per_image_alone": round(cpu_ms, 3),
            "cpu_ms_per_image_e2e": {
                size: round(1e3 * run["cpu_s"] / run["files"], 3) for size, run in runs.items()
            },
        }
        if small != large:  # the rate once started: the extra posters over the extra time
            steady = (runs[large]["files"] - runs[small]["files"]) / (
                runs[large]["wall_s"] - runs[small]["wall_s"]
            )
            report[precision]["steady_img_s"] = round(steady, 1)
            report[precision]["steady_vs_bound"] = round(steady / bound, 3)
    if {"float32", "bfloat16"} <= set(precisions):
        report["bfloat16_vs_float32_e2e"] = {
            size: round(
                result["end_to_end"]["bfloat16"][size]["images_per_s"]
                / result["end_to_end"]["float32"][size]["images_per_s"],
                2,
            )
            for size in map(str, sizes)
        }
    return report


def main() -> None:
    from poster_ray.bundle import bundle_info
    from poster_ray.errors import PosterRayError

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", help="a bundle to benchmark (default: build one untrained)")
    parser.add_argument("--model", default="custom_cnn", help="of the built bundle")
    parser.add_argument("--more-backbones", nargs="*", default=[], help="of the built bundle")
    parser.add_argument("--image-size", type=int, default=128, help="of the built CNN")
    parser.add_argument("--name", help="names the results file (default: cnn<size>)")
    parser.add_argument("--dataset", default="../shared/datasets/movie-posters")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--decode-posters", type=int, default=5000, help="for D")
    parser.add_argument("--predict-posters", type=int, default=2000, help="for P")
    parser.add_argument("--infer-args", default="", help="more `poster-ray infer` options")
    parser.add_argument("--results", default="bench/results")
    args = parser.parse_args()
    from poster_ray import models

    if args.more_backbones and not models.is_transfer(args.model):
        parser.error(f"--more-backbones joins a transfer model's backbones, not {args.model}'s")

    dataset = Path(args.dataset)
    posters = sorted(path.resolve() for path in (dataset / "Images").glob("*.jpg"))
    name = args.name or (f"cnn{args.image_size}" if not args.bundle else Path(args.bundle).name)
    extra = ["--batch-size", str(args.batch_size), *shlex.split(args.infer_args)]
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as scratch:
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            try:
                bundle = build_bundle(
                    args.model, args.more_backbones, args.image_size, dataset, Path(scratch)
                )
            except PosterRayError as error:  # an unknown model or backbone: one line
                parser.error(str(error))
        info = bundle_info(bundle)  # bundle.json: its spec's size, how it was made
        built = "+".join([args.model, *args.more_backbones])
        image_size = info["image_size"]
        result: dict = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "cpu": cpu_info(),
            "versions": versions(),
            "bundle": {
                "path": args.bundle or f"built: {built} at {image_size} px",
                "image_size": image_size,
                "info": info["train_config"],
            },
            "batch_size": args.batch_size,
            "decode_only": {"method": DECODE_METHOD, "runs": []},
            "predict_only": {precision: {"runs": []} for precision in args.precisions},
            "end_to_end": {precision: {} for precision in args.precisions},
        }

        def measure_bounds() -> None:
            decode = decode_rate(posters, image_size, args.decode_posters)
            result["decode_only"]["runs"].append({**decode, "load_average": load_average()})
            print(f"D decode only: {decode}", flush=True)
            for precision in args.precisions:
                predict = predict_rate(
                    bundle, posters, args.predict_posters, precision, args.batch_size
                )
                runs = result["predict_only"][precision]["runs"]
                runs.append({**predict, "load_average": load_average()})
                print(f"P predict only, {precision}: {predict}", flush=True)

        measure_bounds()
        for count in sorted(args.sizes):
            list_file = link_posters(posters, count, Path(scratch, f"links-{count}"))
            for precision in args.precisions:
                out = Path(scratch, f"out-{count}-{precision}")
                run = run_infer(bundle, list_file, out, precision, extra)
                result["end_to_end"][precision][str(count)] = run
                print(f"end to end, {count} posters, {precision}: {json.dumps(run)}", flush=True)
            if "float32" in args.precisions:
                result.setdefault("agreement_with_float32", {})[str(count)] = {
                    precision: agreement(
                        Path(scratch, f"out-{count}-float32"),
                        Path(scratch, f"out-{count}-{precision}"),
                    )
                    for precision in args.precisions
                    if precision != "float32"
                }
        measure_bounds()

    for figures in [result["decode_only"], *result["predict_only"].values()]:
        for key in figures["runs"][0].keys() - {"load_average"}:
            figures[key] = statistics.median(run[key] for run in figures["runs"])
    result["report"] = compare(result, args.sizes, args.precisions)
    print(json.dumps(result["report"], indent=2))
    out = Path(args.results, f"infer_throughput_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    update_index(Path(args.results, "infer_throughput.json"), name, out, result)
    print(f"wrote {out}")


def update_index(index: Path, name: str, out: Path, result: dict) -> None:
    """bench/results/infer_throughput.json: every configuration's report, by name."""
    runs = json.loads(index.read_text()).get("configurations", {}) if index.is_file() else {}
    runs[name] = {
        "results": out.name,
        "command": result["command"],
        "cpu": result["cpu"]["model_name"],
        "report": result["report"],
    }
    index.write_text(json.dumps({"configurations": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
