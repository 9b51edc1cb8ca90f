"""`ray job submit --working-dir . -- python jobs/evaluate.py ...`: the `poster-ray evaluate` stage.

Same arguments as `poster-ray evaluate`; paths are absolute or URIs (s3://...), or
relative to $POSTER_RAY_STORAGE in a submitted job.
"""

import sys

from poster_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
