"""Where the tests find the repository and the development copy of the real dataset."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The shared copy of the real dataset beside the repository, where there is one: tests
# that read it skip without it.
REAL_DATA = REPO.parent / "shared/datasets/movie-posters"
