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

#: The built-in catalog shipped inside the package (``raydund/catalog/``; the checkout's
#: top-level ``catalog/`` is a symlink to it): corpus and model declarations.
CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
#: Environment variable naming the user's own catalog folders (``os.pathsep``-separated).
CATALOG_PATH_VAR = "RAYDUND_CATALOG_PATH"


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
    def from_env(cls, env: dict | None = None) -> Settings:
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

    @property
    def catalog_file(self) -> Path | None:
        """The SQLite file of the Iceberg catalog (``None`` for a server catalog such as Postgres)."""
        prefix = "sqlite:///"
        if not self.catalog_uri.startswith(prefix):
            return None
        return Path(self.catalog_uri[len(prefix):].split("?", 1)[0])

    def prepare(self) -> Settings:
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


def catalog_dirs(env: dict | None = None) -> list[Path]:
    """The catalog folders, in lookup order: ``RAYDUND_CATALOG_PATH`` entries, then the built-in one.

    Each folder holds ``corpora/*.yaml`` and ``models/*.yaml``. A user entry with the
    same name as a built-in one (or one in a later folder) wins: the first folder
    that declares a name is the one read.

    Parameters
    ----------
    env : dict, optional
        Environment to read (default ``os.environ``).

    Raises
    ------
    UserError
        A listed folder does not exist.
    """
    env = os.environ if env is None else env
    dirs = []
    for entry in env.get(CATALOG_PATH_VAR, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = _abs_path(entry)
        if not folder.is_dir():
            raise UserError(f"{CATALOG_PATH_VAR} names {entry!r}, which is not a folder")
        dirs.append(folder)
    return [*dirs, CATALOG_DIR]


def catalog_entries(kind: str, env: dict | None = None) -> dict[str, Path]:
    """Every catalog entry of ``kind`` by name -> the YAML file that declares it (first folder wins).

    Parameters
    ----------
    kind : {"corpora", "models"}
        Sub-folder of the catalog.
    env : dict, optional
        Environment to read (default ``os.environ``).
    """
    found: dict[str, Path] = {}
    for folder in catalog_dirs(env):
        for path in sorted((folder / kind).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def load_yaml(kind: str, name: str) -> dict:
    """Read the catalog entry ``<kind>/<name>.yaml``, or a YAML file given by path.

    The entry is looked up in the folders of ``RAYDUND_CATALOG_PATH`` first, then in
    the built-in catalog (:func:`catalog_dirs`).

    Parameters
    ----------
    kind : {"corpora", "models"}
        Sub-folder of the catalog.
    name : str
        Entry name (``conll2000``) or a path to a YAML file.

    Raises
    ------
    UserError
        No such entry.
    """
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        entries = catalog_entries(kind)
        if name not in entries:
            raise UserError(f"unknown {kind[:-1] if kind != 'corpora' else 'corpus'} {name!r}; "
                            f"known: {', '.join(entries)}")
        path = entries[name]
    elif not path.is_file():
        raise UserError(f"no catalog file {name!r}")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    data.setdefault("name", path.stem)
    return data
