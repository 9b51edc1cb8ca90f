"""`ray job submit -- python jobs/pipeline.py --data DIR --out DIR`: the whole pipeline."""

import sys

from poster_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
