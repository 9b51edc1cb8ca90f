"""`ray job submit -- python jobs/batch_infer.py BUNDLE --input IN --output DIR`: bulk inference.

Submit the same command again after any failure: it resumes where the last run stopped.
"""

import sys

from poster_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
