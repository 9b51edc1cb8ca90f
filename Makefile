# Two entry points, both self-contained on a fresh machine with Python >= 3.11:
#   make run    set up, then run the whole pipeline (quick profile) on a local Ray
#   make test   set up, then lint and run the test suite (make test-fast: the unit tier)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# The dataset: DATA=..., else $POSTER_DATA, else the development copy beside the
# repository when there is one, else poster-ray clones the public dataset.
DATA ?= $(or $(POSTER_DATA),$(wildcard ../shared/datasets/movie-posters))
PROFILE ?= quick

.PHONY: run test test-fast setup lint

setup: $(STAMP)

# uv installs what pip would (the same resolution of pyproject.toml) in about half the
# time: a fresh-clone .ci/run reached its tests after 47-68 s, against 1 min 52 s with pip
# (README, "How long"). Bytecode is compiled at install, as pip does, so that no process
# pays for it when PYTHONDONTWRITEBYTECODE is set, as on the development machine, where
# TensorFlow's import then took 11 s instead of 6 s in every process (timed by hand).
# uv is pinned to a minor release, its `pip` interface's flags being stable within one.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv==0.13.*"
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
		-e ".[dev,bayesopt,cluster,tracking]"
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/poster-ray pipeline --profile $(PROFILE) $(if $(DATA),--data $(DATA)) --out runs/$(PROFILE)

lint: $(STAMP)
	$(BIN)/ruff format --check poster_ray jobs tests bench
	$(BIN)/ruff check poster_ray jobs tests bench

# Every tier (CI runs this), its test files shared by two processes (each with its own
# local Ray); test-fast is the inner loop: the unit tier, no Ray.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: lint
	$(BIN)/python -m pytest -q -m unit
