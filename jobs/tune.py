"""`ray job submit -- python jobs/tune.py RUN_DIR --model custom_cnn --trials N`: tuning.

Resubmitting the same command resumes the experiment where it stopped.
"""

import sys

from poster_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
