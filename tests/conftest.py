"""Shared fixtures. Tests that need the real data in ../shared/data skip locally when it is missing,
but fail in CI (CI=true): a missing data folder must never turn into a silently green run."""

from __future__ import annotations

import os

# Before torch loads: OpenMP threads that spin at barriers turn a busy 2-core machine (CI runners, a laptop with
# other work) into a crawl - measured 30x slower steps for a tiny model. Passive waiting costs little here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("HARNESS_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (root / "README.md").exists():
        message = f"real data not found at {root}: set HARNESS_DATA_DIR to the shared data folder"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Keep every test's caches and wandb files out of the user's home."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "harness-cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def sweep_reference(tmp_path_factory, shared_data):
    """One local-launcher sweep of tests/test_sweep_e2e.py's grid (two arms and a broken one), shared by the sweep
    tests and the Ray tests. tests/test_sweep_e2e.py retries its broken arm: compare the other two."""
    from test_sweep_e2e import reference_sweep

    with pytest.MonkeyPatch.context() as env:  # the session fixture runs outside the per-test caches
        env.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "harness-cache"))
        env.setenv("WANDB_MODE", "offline")
        env.setenv("HF_HUB_OFFLINE", "1")
        return reference_sweep(tmp_path_factory.mktemp("sweep"), shared_data)
