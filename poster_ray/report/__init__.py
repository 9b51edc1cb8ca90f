"""Pages a person can look at: the HTML report of a run and the gallery of a bulk job.

    html        the shared page skeleton, tables and embedded images (no network, no CDN)
    thumbnails  one small JPEG per poster: inline for the report, a Ray Data job for galleries
    posters     the test posters a model gets most wrong and most right
    run_page    RUN/report/index.html: comparison, curves, per-genre scores, trials, posters
    gallery     PREDICTIONS/gallery/: paged views of every prediction, written incrementally
    assets      the gallery's inline stylesheet and script

`write_report(path)` picks the page from what `path` holds.
"""

from __future__ import annotations

from poster_ray.config import ReportSettings
from poster_ray.errors import PosterRayError
from poster_ray.infer.output import JOB_FILE
from poster_ray.layout import RunDir
from poster_ray.storage import Location


def write_report(path: str, settings: ReportSettings | None = None) -> Location:
    """The run report of a prepared run, or the gallery of a bulk inference output folder;
    returns the page written."""
    location = Location.of(path)
    if RunDir(location).manifest.is_file():
        from poster_ray.report.run_page import write_run_report

        return write_run_report(RunDir(location))
    if (location / JOB_FILE).is_file():
        from poster_ray.report.gallery import write_gallery

        return write_gallery(location, settings)
    raise PosterRayError(
        f"{path}: neither a prepared run (no manifest.parquet) nor a bulk inference output "
        f"folder (no {JOB_FILE})"
    )
