# The README's two commands: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps run lint test bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml rockstar_mp/_hotpath.c rockstar_mp/_threadprof.c | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

system-deps:
	bash .ci/system-deps.sh

# The example server: 4 workers on 127.0.0.1:8000, merged metrics on http://127.0.0.1:9090/metrics
run: install
	$(BIN)/gunicorn -c gunicorn_conf.py examples.app:app

# ruff (pyflakes, pycodestyle, import order, bugbear) and mypy (strict on the public API); config in pyproject.toml
lint: install
	$(BIN)/ruff check rockstar_mp tests benchmarks examples gunicorn_conf.py
	$(BIN)/mypy rockstar_mp

# Two test processes (pytest-xdist, one file each at a time) share the machine: the suite waits a lot (servers
# starting, timeouts), so it takes half the time; the timing limits a test asserts after a poll get 1.5x for
# sharing the cores (tests/helpers.py SLACK; set ROCKSTAR_TEST_SLACK to override). The tests that measure
# speed against a figure (marked `alone`) run afterwards, one at a time, with the machine to themselves.
TEST_ENV = ROCKSTAR_TEST_MIBDIRS="$$(bash .ci/ietf-mibs.sh)"
PYTEST = $(BIN)/python -m pytest -q -p no:cacheprovider
test: install system-deps lint
	$(TEST_ENV) ROCKSTAR_TEST_SLACK="$${ROCKSTAR_TEST_SLACK:-1.5}" $(PYTEST) -n 2 --dist loadfile -m "not alone" $(PYTEST_ARGS) \
		|| [ $$? -eq 5 ]  # 5: PYTEST_ARGS selected none of these
	$(TEST_ENV) $(PYTEST) -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: install
	$(BIN)/python -m benchmarks.run

# docs/architecture.md section 2 (the segment's byte layout) is generated from rockstar_mp/segment/layout.py
docs: install
	$(BIN)/python -m rockstar_mp.segment.layout_doc --write docs/architecture.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .cache .mypy_cache .ruff_cache *.egg-info
