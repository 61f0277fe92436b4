# Development commands. Each one creates or updates its virtual environment first.
#
#   make demo        run the example project's scheduler on SQLite (Ctrl-C stops it)
#   make test        ruff, mypy, makemigrations --check, pytest on SQLite, PostgreSQL, MariaDB
#                    (the backends at the same time, each in three shards)
#   make lint        ruff check, ruff format --check and mypy
#   make bench       the benchmarks on SQLite, PostgreSQL, MariaDB (~15 min; docs/benchmarks.md)
#   make screenshots regenerate docs/screenshots/ from a seeded example database (Chromium)
#
# Variables:
#   PYTHON=3.12            Python version (or an interpreter command/path); default 3.11
#   DJANGO=6               Django series ("4.2", "5.2", "6") or a requirement; default 5.2
#   VENV=dir               the environment (default .venv, or .venv-py<PYTHON>-django<DJANGO>)
#   BACKENDS=sqlite,...    the backends make test runs (default: all three)
#   REQUIRE_BACKENDS=1     an unreachable database server fails instead of being skipped
#   PARALLEL=0             one backend after another, unsplit, output as it comes
#                          (default 1: all at the same time, logs printed at the end)
#   SHARDS=1               pytest runs per backend when parallel (default 3; 1: no split)
#   TEST_TIMEOUT=seconds   the most one pytest run may take
#   ARGS="-k store -x"     passed to pytest
#   DEMO_SECONDS=30        make demo stops after that many seconds
#   BENCH_ARGS="--quick"    passed to python -m benchmarks (e.g. --backends sqlite)

PYTHON ?= 3.11
DJANGO ?= 5.2
ifeq ($(PYTHON)/$(DJANGO),3.11/5.2)
VENV ?= .venv
else
VENV ?= .venv-py$(notdir $(PYTHON))-django$(subst $(space),,$(subst <,,$(subst >,,$(subst =,,$(subst $(comma),_,$(DJANGO))))))
endif
BACKENDS ?= sqlite,postgres,mariadb
REQUIRE_BACKENDS ?=
PARALLEL ?= 1
SHARDS ?=
TEST_TIMEOUT ?=
ARGS ?=
DEMO_SECONDS ?=
BENCH_ARGS ?=

comma := ,
space := $(subst ,, )
is_true = $(filter 1 yes true on,$(1))
VPY = $(VENV)/bin/python
TEST_FLAGS = --backends "$(BACKENDS)" \
	$(if $(call is_true,$(REQUIRE_BACKENDS)),--require) \
	$(if $(call is_true,$(PARALLEL)),--parallel $(if $(SHARDS),--shards $(SHARDS)),--sequential) \
	$(if $(TEST_TIMEOUT),--timeout $(TEST_TIMEOUT))

.PHONY: help venv demo test lint format clean bench screenshots

help:
	@sed -n '1,/^$$/s/^# \{0,1\}//p' Makefile

venv:
	@py=$$(scripts/find-python "$(PYTHON)") && "$$py" scripts/bootstrap.py --venv "$(VENV)" --django "$(DJANGO)"

demo: venv
	$(VPY) manage.py migrate --no-input
	$(VPY) -u manage.py runapscheduler $(if $(DEMO_SECONDS),--seconds $(DEMO_SECONDS))

test: venv
	$(VPY) scripts/runtests.py $(strip $(TEST_FLAGS)) -- $(ARGS)

bench: venv
	$(VPY) -m benchmarks $(BENCH_ARGS)

screenshots: venv
	$(VPY) scripts/screenshots.py

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	DJANGO_APSCHEDULER_TEST_DB=sqlite $(VPY) -m mypy django_apscheduler

format: venv
	$(VPY) -m ruff check --fix .
	$(VPY) -m ruff format .

clean:
	rm -rf .venv .venv-py* .cache .pytest_cache .ruff_cache .mypy_cache django_apscheduler.egg-info
