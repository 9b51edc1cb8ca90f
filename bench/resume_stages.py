"""Kill-and-resubmit at every stage boundary of the pipeline, beside an uninterrupted run.

The uninterrupted run first (its own run directory), then a chain in another one:
attempt k runs the same `poster-ray pipeline` command and is stopped with SIGTERM as
its (k+1)-th stage starts, so that every attempt must reuse the k-1 stages finished
before it and finish one more; the last attempt runs to the end. For each attempt:
its wall time, the time it took to reach new work (its Ray start and the reuse of the
finished stages), its exit status, and any sign of a finished stage done again (an
epoch line, decoding or feature computation in a stage an earlier attempt finished).

    python bench/resume_stages.py --data ../shared/datasets/movie-posters [--profile quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POSTER_RAY = Path(sys.executable).parent / "poster-ray"
STAGE = re.compile(r"^== (\w+): ")
# What a stage prints only when it does its work: training epochs, decoding, features.
WORK = re.compile(r"^(epoch \d+/\d+:|Decoding \d+ posters|Computing \S+ features)")


def pipeline(data: str, out: Path, profile: str) -> list[str]:
    return [str(POSTER_RAY), "pipeline", "--profile", profile, "--data", data, "--out", str(out)]


def attempt(argv: list[str], stop_at_stage: int | None) -> dict:
    """Run the pipeline, stopping it with SIGTERM as stage number `stop_at_stage`
    (1-based) starts; None runs it to the end."""
    started = time.perf_counter()
    driver = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    lines, stages, stopped_at = [], [], None
    for line in driver.stdout:
        lines.append(line.rstrip("\n"))
        if match := STAGE.match(line):
            stages.append((match.group(1), round(time.perf_counter() - started, 1), len(lines)))
            if stop_at_stage is not None and len(stages) == stop_at_stage:
                stopped_at = stages[-1][1]
                driver.send_signal(signal.SIGTERM)
    status = driver.wait()
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "status": status,
        "stopped_at_s": stopped_at,
        "stages": [(name, at) for name, at, _ in stages],
        "lines": lines,
        "stage_lines": [line for _, _, line in stages],
    }


def redone(result: dict, finished: int) -> list[str]:
    """Work lines printed inside the first `finished` stages of an attempt."""
    starts = result["stage_lines"]
    end = starts[finished] - 1 if finished < len(starts) else len(result["lines"])
    return [line for line in result["lines"][:end] if WORK.match(line)]


def summary(result: dict, finished: int) -> dict:
    stages = result["stages"]
    new_work_at = stages[finished][1] if finished < len(stages) else result["wall_s"]
    return {
        "wall_s": result["wall_s"],
        "status": result["status"],
        "stages_reused": [name for name, _ in stages[:finished]],
        "new_work_after_s": new_work_at,
        "stopped_at_s": result["stopped_at_s"],
        "redone": redone(result, finished),
        "last_lines": result["lines"][-3:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/resume_stages.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="resume-stages-"))
    os.environ.pop("RAY_ADDRESS", None)
    try:
        reference = attempt(pipeline(args.data, work / "uninterrupted", args.profile), None)
        print(f"uninterrupted: {reference['wall_s']} s, exit {reference['status']}", flush=True)
        argv = pipeline(args.data, work / "chain", args.profile)
        chain, k = [], 1
        while True:
            result = attempt(argv, stop_at_stage=k + 1)
            chain.append(summary(result, finished=k - 1))
            print(f"attempt {k}: {json.dumps(chain[-1])}", flush=True)
            if result["stopped_at_s"] is None:
                break  # it ran to the end: no stage k+1 to stop at
            k += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "profile": args.profile,
        "uninterrupted": {
            "wall_s": reference["wall_s"],
            "status": reference["status"],
            "stages": reference["stages"],
        },
        "chain": chain,
        "chain_wall_s": round(sum(item["wall_s"] for item in chain), 1),
        "command": f"python bench/resume_stages.py --data {args.data} --profile {args.profile}",
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"uninterrupted {reference['wall_s']} s; {len(chain)} attempts, "
        f"{record['chain_wall_s']} s in all; "
        f"finished stages done again: {sum(len(item['redone']) for item in chain)} lines"
    )


if __name__ == "__main__":
    main()
