"""`ray job submit --working-dir . -- python jobs/train.py ...`: the `poster-ray train` stage.

Same arguments as `poster-ray train`; paths are absolute or URIs (s3://...), or
relative to $POSTER_RAY_STORAGE in a submitted job.
"""

import sys

from poster_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
