"""Where raydund keeps things, and the declarative catalog it reads.

Every location is an absolute path or URI: a Ray job runs in a temporary copy of
the working directory, so a relative path would land somewhere that vanishes.

Embedded defaults (a laptop) all live under one home folder::

    $RAYDUND_HOME            (default ~/.raydund)
      catalog.db             Iceberg SQL catalog (SQLite)
      warehouse/             Iceberg table data and metadata
      mlflow.db              MLflow tracking store (SQLite)
      mlartifacts/           MLflow artifacts
      downloads/             corpora fetched from their public URLs
      reports/<model>__<corpus>/  HTML report and neuron browser

On a cluster the same names are pointed elsewhere by environment variables
(see ``Settings.from_env``); no code changes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import yaml

from raydund.errors import UserError

#: The repository's ``catalog/`` folder: corpus and model declarations.
CATALOG_DIR = Path(__file__).resolve().parent.parent / "catalog"


#: ``scheme://user:password@host``: the password part of a URI.
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")


def redact_uri(value: str) -> str:
    """``value`` with any password embedded in a URI replaced by ``***`` (for logs and MLflow)."""
    return _URI_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", value)


def uri_has_password(value: str) -> bool:
    """Whether a URI carries an inline password (``postgresql://user:secret@host/db``)."""
    return bool(_URI_PASSWORD.search(value))


def check_unit_interval(name: str, value: float) -> float:
    """A share or threshold must lie in [0, 1]; one clear line otherwise.

    Parameters
    ----------
    name : str
        The option, as the user typed it (``--thresholds``).
    value : float
        Its value.

    Raises
    ------
    UserError
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise UserError(f"{name} must lie in [0, 1], got {value!r}")
    return number


def check_layer(layer: int, num_layers: int, what: str = "the model") -> int:
    """A layer index must exist: 0 (embeddings) .. ``num_layers - 1``.

    Raises
    ------
    UserError
    """
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < num_layers:
        raise UserError(f"layer {layer!r} does not exist in {what} (layers 0..{num_layers - 1})")
    return layer


def _abs_path(value: str) -> Path:
    return Path(os.path.expanduser(value)).resolve()


@dataclasses.dataclass(frozen=True)
class Settings:
    """Locations of the lakehouse, the tracking store and the data mirror.

    Attributes
    ----------
    home : Path
        Root folder of the embedded defaults.
    catalog_uri : str
        SQLAlchemy URI of the Iceberg SQL catalog (SQLite here, Postgres at scale).
    warehouse : str
        Absolute URI of the Iceberg warehouse (``file:///...`` or ``s3://...``).
    tracking_uri : str
        MLflow tracking URI (``sqlite:////abs/mlflow.db`` or ``http://host:port``).
    artifact_root : str
        Absolute artifact location for experiments raydund creates.
    data_mirror : Path or None
        A local folder holding corpus files under the catalog's relative paths;
        read before any download.
    """

    home: Path
    catalog_uri: str
    warehouse: str
    tracking_uri: str
    artifact_root: str
    data_mirror: Path | None = None

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        """Build settings from environment variables, falling back to the embedded defaults.

        ``RAYDUND_HOME``, ``RAYDUND_CATALOG_URI``, ``RAYDUND_WAREHOUSE``,
        ``MLFLOW_TRACKING_URI``, ``RAYDUND_ARTIFACT_ROOT``, ``RAYDUND_DATA_MIRROR``.
        """
        env = os.environ if env is None else env
        home = _abs_path(env.get("RAYDUND_HOME", "~/.raydund"))
        mirror = env.get("RAYDUND_DATA_MIRROR")
        settings = cls(
            home=home,
            catalog_uri=env.get("RAYDUND_CATALOG_URI", f"sqlite:///{home}/catalog.db"),
            warehouse=env.get("RAYDUND_WAREHOUSE", (home / "warehouse").as_uri()),
            tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db"),
            artifact_root=env.get("RAYDUND_ARTIFACT_ROOT", (home / "mlartifacts").as_uri()),
            data_mirror=_abs_path(mirror) if mirror else None,
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse relative locations, which would break inside a Ray job's working dir."""
        for name in ("warehouse", "artifact_root"):
            value = getattr(self, name)
            if "://" not in value:
                raise UserError(f"{name} must be an absolute URI (file:///... or s3://...), got {value!r}")
        for name in ("catalog_uri", "tracking_uri"):
            value = getattr(self, name)
            if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
                raise UserError(f"{name} must point at an absolute SQLite path (sqlite:////abs/file.db), got {value!r}")

    def prepare(self) -> "Settings":
        """Create the local folders the embedded defaults need (no-op for remote URIs)."""
        self.home.mkdir(parents=True, exist_ok=True)
        for uri in (self.warehouse, self.artifact_root):
            if uri.startswith("file://"):
                Path(uri[len("file://"):]).mkdir(parents=True, exist_ok=True)
        return self

    def report_dir(self, model: str, corpus: str) -> Path:
        """Where the HTML report and the neuron browser of one (model, corpus) are written."""
        return self.home / "reports" / f"{model}__{corpus}"

    def env_vars(self) -> dict[str, str]:
        """The environment a Ray job or worker needs to see the same locations."""
        out = {
            "RAYDUND_HOME": str(self.home),
            "RAYDUND_CATALOG_URI": self.catalog_uri,
            "RAYDUND_WAREHOUSE": self.warehouse,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "RAYDUND_ARTIFACT_ROOT": self.artifact_root,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        if self.data_mirror:
            out["RAYDUND_DATA_MIRROR"] = str(self.data_mirror)
        return out


def load_yaml(kind: str, name: str) -> dict:
    """Read ``catalog/<kind>/<name>.yaml``, or a YAML file given by path.

    Parameters
    ----------
    kind : {"corpora", "models"}
        Sub-folder of the catalog.
    name : str
        Entry name (``conll2000``) or a path to a YAML file.
    """
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = CATALOG_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CATALOG_DIR / kind).glob("*.yaml"))
        raise UserError(f"unknown {kind[:-1] if kind != 'corpora' else 'corpus'} {name!r}; known: {', '.join(known)}")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    data.setdefault("name", path.stem)
    return data
