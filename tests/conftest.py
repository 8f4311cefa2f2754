"""Shared test fixtures: the fixture root comes from FAIRJAX_FIXTURES (default ../shared/fixtures)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    return Path(os.environ.get("FAIRJAX_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = fixtures_root()
    # skipping when the fixture dir is absent is the suite's one kind of skip (this one and
    # shared_data_dir below); .ci/run refuses to run at all without the fixture dir
    if not root.is_dir():
        pytest.skip(f"fixture directory {root} is absent (set FAIRJAX_FIXTURES)")
    return root


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    root = fixtures_root().parent / "data"
    if not root.is_dir():
        pytest.skip(f"shared data directory {root} is absent")
    return root
