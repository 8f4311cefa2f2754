"""One source of truth for dependencies: requirements.txt is the pinned lock of pyproject.toml's
[project] dependencies, requirements-test.txt of its `test` extra; the same packages on both
sides, and every pin satisfies pyproject's version range (so `pip install .` gets what the lock
tested, e.g. qwix for QLoRA)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def lock(path: Path) -> dict[str, str]:
    """{normalised name: pinned version} of a requirements file (comments skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            pins = [s.version for s in r.specifier if s.operator == "=="]
            out[_name(line)] = pins[0] if pins else ""
    return out


def declared(section: list[str]) -> dict[str, Requirement]:
    return {_name(r): Requirement(r) for r in section}


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def mismatches(locked: dict[str, str], decl: dict[str, Requirement]) -> list[str]:
    out = [f"{n} is locked but not declared" for n in sorted(set(locked) - set(decl))]
    out += [f"{n} is declared but not locked" for n in sorted(set(decl) - set(locked))]
    out += [f"{n}=={v} is outside the declared {decl[n].specifier}"
            for n, v in sorted(locked.items())
            if n in decl and v and not decl[n].specifier.contains(v, prereleases=True)]
    return out


def test_mismatches_are_found():
    assert mismatches({"qwix": "0.1.8"}, {}) == ["qwix is locked but not declared"]
    assert mismatches({"jax": "0.9"}, declared(["jax>=0.10.2"])) == [
        "jax==0.9 is outside the declared >=0.10.2"]


@pytest.mark.parametrize("lock_file,section", [("requirements.txt", None),
                                               ("requirements-test.txt", "test")])
def test_lock_files_match_pyproject(lock_file, section):
    proj = _pyproject()["project"]
    decl = declared(proj["dependencies"] if section is None
                    else proj["optional-dependencies"][section])
    assert mismatches(lock(ROOT / lock_file), decl) == []
