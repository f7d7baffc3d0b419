"""Helpers for tests that start processes of their own (Ray nodes, MLflow servers, the CLI)."""

from __future__ import annotations

import os
import socket


def base_env() -> dict:
    """This process's environment without locations an earlier test left (mlflow.set_tracking_uri sets one)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("RAYDUND_", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
