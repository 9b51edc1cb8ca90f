"""`ray job submit -- python jobs/report.py PATH`: a run's HTML report, or the gallery of a
bulk inference output (its thumbnails made across the cluster). Submit it again after
new predictions: it adds only what is new."""

import sys

from poster_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
