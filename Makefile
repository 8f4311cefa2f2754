PYTHON ?= python3
export FAIRJAX_FIXTURES ?= $(abspath ../shared/fixtures)

.PHONY: install demo test test-fast bench

install:
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .

# Quick start 1: install, then the main job on the embedded demo corpus (ends with a fairness report).
demo: install
	$(PYTHON) -m fairjax.train --config=configs/ilql.py

# Quick start 2: the whole test suite (what CI runs).
test: install
	$(PYTHON) -m pytest -n 2 --dist loadfile -q tests

test-fast:
	$(PYTHON) -m pytest -n 2 --dist loadfile -q -m "not slow" tests
