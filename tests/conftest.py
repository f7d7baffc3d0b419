"""Shared fixtures: an isolated raydund home per test, tiny models, one local Ray per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["POLARS_ICEBERG_PLANNER"] = "pyiceberg"
os.environ.pop("RAY_ADDRESS", None)
sys.path.insert(0, str(Path(__file__).parent / "support"))

import tiny_models

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def settings(tmp_path):
    """Settings rooted in a fresh temporary home (catalog, warehouse, MLflow)."""
    from raydund.config import Settings

    return Settings.from_env({"RAYDUND_HOME": str(tmp_path / "home")}).prepare()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(arch, **config)`` -> folder of a tiny random model, built once per shape."""
    root = tmp_path_factory.mktemp("models")
    cache = {}

    def make(arch: str = "bert", **kwargs) -> str:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = arch + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
            cache[key] = str(tiny_models.build(arch, root / name, **kwargs))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        # address="local": a fresh cluster, never one a test started with `ray start`
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
