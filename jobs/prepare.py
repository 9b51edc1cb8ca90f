"""`ray job submit --working-dir . -- python jobs/prepare.py ...`: the `poster-ray prepare` stage.

Same arguments as `poster-ray prepare`; paths are absolute or URIs (s3://...), or
relative to $POSTER_RAY_STORAGE in a submitted job.
"""

import sys

from poster_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
