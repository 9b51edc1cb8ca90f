"""Bulk inference: peak memory at two input sizes, and speed against bare `model.predict`.

Each size runs `poster-ray infer` in a fresh process over that many distinct paths
(symlinks cycling through the shared posters, so the page cache holds every file), while
the whole process tree (driver, Ray's own processes, decode workers, model actors) is
sampled every 0.5 s. RSS counts shared memory (Ray's object store) once per process that
maps it; PSS splits it between them, so its sum is the honest total. The baseline is the
model alone: `model.predict` on arrays decoded beforehand, in one process on the same
cores. Start-up (Ray, TensorFlow in each actor, the model) is paid once per job, so the
steady rate, extra posters over extra time from the small to the large run, is the one
to set against the baseline. Peak memory that stays flat from the small to the large
size is what lets an overnight job take any number of posters.

    python bench/infer_throughput.py BUNDLE [--small 5000] [--large 50000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray  # noqa: F401 - importing Ray puts the psutil it ships on sys.path

psutil = importlib.import_module("psutil")

SAMPLE_EVERY_S = 0.5


def link_posters(images: Path, count: int, folder: Path) -> Path:
    """A list file of `count` distinct paths: symlinks cycling through the posters."""
    posters = sorted(path.resolve() for path in images.glob("*.jpg"))
    folder.mkdir(parents=True)
    links = []
    for index in range(count):
        link = folder / f"{index:07d}.jpg"
        link.symlink_to(posters[index % len(posters)])
        links.append(str(link))
    list_file = folder.with_suffix(".txt")
    list_file.write_text("\n".join(links) + "\n")
    return list_file


class TreeMemory:
    """Peak summed RSS and PSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_rss = self.peak_pss = 0
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
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # a worker that ended between listing and reading
                rss, pss = rss + memory.rss, pss + memory.pss
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def run_infer(bundle: str, list_file: Path, out: Path, args: argparse.Namespace) -> dict:
    """One `poster-ray infer` run in a fresh process; its summary plus peak memory."""
    command = [sys.executable, "-m", "poster_ray.cli", "infer", bundle]
    command += ["--input", str(list_file), "--output", str(out), "--workers", str(args.workers)]
    command += ["--batch-size", str(args.batch_size)]
    environ = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL)
    memory = TreeMemory(process.pid)
    if process.wait() != 0:
        raise SystemExit(f"poster-ray infer failed with exit code {process.returncode}")
    memory.stop()
    wall_s = time.perf_counter() - started
    summary = json.loads((out / "_summary.json").read_text())
    if summary["errors"]:
        raise SystemExit(f"{summary['errors']} posters failed: see the error column in {out}")
    return {
        "files": summary["files"],
        "errors": summary["errors"],
        "wall_s": round(wall_s, 1),
        "images_per_s": round(summary["files"] / wall_s, 1),
        "peak_rss_mb": round(memory.peak_rss / 2**20),
        "peak_pss_mb": round(memory.peak_pss / 2**20),
    }


def compute_only(bundle_path: str, images: Path, count: int, batch_size: int) -> float:
    """Images/s of `model.predict` alone, on posters decoded into memory first."""
    import numpy as np

    from poster_ray.bundle import load_bundle
    from poster_ray.images import decode_files

    bundle = load_bundle(Path(bundle_path))
    paths = np.array(sorted(str(path) for path in images.glob("*.jpg"))[:count])
    pixels, _ = decode_files(paths, bundle.spec)
    bundle.model.predict(pixels[:batch_size], verbose=0)  # build the graph once
    started = time.perf_counter()
    bundle.model.predict(pixels, batch_size=batch_size, verbose=0)
    return len(pixels) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", help="a model bundle directory")
    parser.add_argument("--images", default="../shared/datasets/movie-posters/Images")
    parser.add_argument("--small", type=int, default=5000, help="posters in the small run")
    parser.add_argument("--large", type=int, default=50000, help="posters in the large run")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compute-posters", type=int, default=2000, help="for the baseline")
    parser.add_argument("--out", default="bench/results/infer_throughput.json")
    args = parser.parse_args()

    images = Path(args.images)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as scratch:
        for name, count in (("small", args.small), ("large", args.large)):
            list_file = link_posters(images, count, Path(scratch, f"links-{name}"))
            runs[name] = run_infer(args.bundle, list_file, Path(scratch, f"out-{name}"), args)
            print(f"{name}: {json.dumps(runs[name])}", flush=True)
    # The extra posters of the large run over the extra time: start-up costs cancel out.
    steady = (runs["large"]["files"] - runs["small"]["files"]) / (
        runs["large"]["wall_s"] - runs["small"]["wall_s"]
    )
    baseline = compute_only(args.bundle, images, args.compute_posters, args.batch_size)
    result = {
        "bundle": args.bundle,
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "runs": runs,
        "steady_img_s": round(steady, 1),
        "compute_only_img_s": round(baseline, 1),
        "end_to_end_vs_compute_only": round(runs["large"]["images_per_s"] / baseline, 2),
        "steady_vs_compute_only": round(steady / baseline, 2),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
