"""Where the dataset is: --data, else $POSTER_DATA, else a clone of the public copy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from poster_ray.config import DATA_ENV_VAR, DATASET_URL, DEFAULT_DATA_DIR
from poster_ray.errors import PosterRayError
from poster_ray.storage import Location


def resolve_data_dir(data: str | None, environ: dict[str, str]) -> Location:
    """--data (a folder or URI), else $POSTER_DATA, else the default folder, cloning the
    dataset into it."""
    chosen = data or environ.get(DATA_ENV_VAR)
    if chosen:
        location = Location.of(chosen)
        if not (location / "train.csv").is_file():
            raise PosterRayError(f"{chosen}: no train.csv there (expected train.csv + Images/)")
        return location
    if not (DEFAULT_DATA_DIR / "train.csv").is_file():
        clone_dataset(DEFAULT_DATA_DIR)
    return Location.of(DEFAULT_DATA_DIR)


def clone_dataset(target: Path) -> None:
    """Fetch the public dataset with git; one clear line when that is impossible."""
    print(f"Data folder {target} is missing: cloning {DATASET_URL} ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.exists()  # a folder the user made (say, without train.csv) is theirs
    try:
        subprocess.run(
            ["git", "clone", "--depth", "1", DATASET_URL, str(target)],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (OSError, subprocess.SubprocessError) as error:
        if not existed:  # remove a partial clone, never the user's own files
            shutil.rmtree(target, ignore_errors=True)
        raise PosterRayError(
            f"could not clone {DATASET_URL} into {target} ({type(error).__name__}); "
            f"download it by hand and pass --data DIR or set {DATA_ENV_VAR}=DIR"
        ) from None
