"""``raydund vacuum``: expire old snapshots, then reclaim files no retained snapshot references.

Two steps, for every table of the lake:

1. Snapshots older than the retention are expired with pyiceberg's own
   ``table.maintenance.expire_snapshots()``, except the current one (and every branch or
   tag head), the last ``keep_last`` and every snapshot a current run still reads
   (:func:`raydund.lake.runs.protected_snapshots`).
2. Every file a retained snapshot of any table references is collected: data and delete
   files, manifests, manifest lists, statistics files, the current ``metadata.json`` and
   those in its metadata log. A file under a table's folder (inside the warehouse) that is
   in none of them and was last modified before the retention is deleted; pyiceberg has
   no orphan-file removal, so this step is ours.

Extraction staging generations (``<activations>/data/staging/<key>-g<n>``) go whole or
not at all: one referenced or recent file (a running job's ``_lease``) keeps every file
of its generation, markers included, so a resumable generation is never half-deleted.
Tile generations of tiled similarity runs (``<warehouse>/tiles/<model>/<generation>``)
likewise: their files are referenced by the ``path`` column of ``neuron_correlation_tiles``
rows, read from every retained snapshot of that table.
A dry run (the default) computes the same plan and changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from raydund.config import Settings
from raydund.errors import UserError
from raydund.lake import runs
from raydund.lake.catalog import Lake
from raydund.lake.commit import commit_with_retry
from raydund.lake.names import NEURON_CORRELATION_TILES, TILES_FOLDER, table_identifier

log = logging.getLogger(__name__)

#: Default age below which nothing is expired or deleted.
DEFAULT_RETENTION = timedelta(days=7)
#: Default number of newest snapshots every table keeps whatever their age.
DEFAULT_KEEP_LAST = 5
#: Folder (under a table's location) holding the extraction staging generations.
STAGING = "data/staging"


@dataclasses.dataclass
class VacuumReport:
    """What a vacuum did, or would do in a dry run.

    Attributes
    ----------
    dry_run : bool
        True when nothing was changed.
    tables : list of str
        Every table looked at.
    expired : dict
        Table identifier -> snapshot ids expired (or that would be).
    files : list of str
        Paths (filesystem paths, no scheme) deleted (or that would be).
    bytes : int
        Their total size.
    kept_recent : int
        Unreferenced files kept because they are younger than the retention.
    """

    dry_run: bool
    tables: list[str] = dataclasses.field(default_factory=list)
    expired: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    files: list[str] = dataclasses.field(default_factory=list)
    bytes: int = 0
    kept_recent: int = 0

    @property
    def snapshots_expired(self) -> int:
        """Snapshots expired (or that would be) over all tables."""
        return sum(len(ids) for ids in self.expired.values())


def lake_exists(settings: Settings) -> bool:
    """False when the catalog is a SQLite file that does not exist yet (nothing to read; nothing is created)."""
    path = settings.catalog_file
    return path is None or path.is_file()


def check_options(retention: timedelta, keep_last: int) -> None:
    """Refuse a negative retention or a ``keep_last`` below one."""
    if retention < timedelta(0):
        raise UserError(f"retention must not be negative (got {retention})")
    if keep_last < 1:
        raise UserError(f"keep_last must be at least 1 (got {keep_last})")


def vacuum(settings: Settings, retention: timedelta = DEFAULT_RETENTION, keep_last: int = DEFAULT_KEEP_LAST,
           dry_run: bool = True, now: datetime | None = None) -> VacuumReport:
    """Expire old snapshots of every table, then delete the files no retained snapshot references.

    Parameters
    ----------
    settings : Settings
        The installation (catalog and warehouse).
    retention : timedelta
        Snapshots and unreferenced files younger than this are kept.
    keep_last : int
        Newest snapshots every table keeps whatever their age.
    dry_run : bool
        Only report what would be expired and deleted.
    now : datetime, optional
        The clock (tests); default: the current UTC time.

    Returns
    -------
    VacuumReport
    """
    check_options(retention, keep_last)
    report = VacuumReport(dry_run=dry_run)
    if not lake_exists(settings):
        return report
    cutoff = (now or datetime.now(UTC)) - retention
    cutoff_ms = int(cutoff.timestamp() * 1000)
    lake = Lake(settings)
    protected = {table_identifier(t): set(ids) for t, ids in runs.protected_snapshots(lake).items()}
    referenced: set[str] = set()
    roots = []
    for ident in lake.table_names():
        report.tables.append(ident)
        ids = _expire(lake, ident, cutoff_ms, keep_last, protected.get(ident, set()), dry_run)
        if ids:
            report.expired[ident] = ids
        tbl = lake.catalog.load_table(ident)
        referenced |= referenced_files(tbl, exclude=set(ids) if dry_run else set())
        if ident == table_identifier(NEURON_CORRELATION_TILES):
            referenced |= referenced_tiles(tbl, exclude=set(ids) if dry_run else set())
        roots.append(fs_path(tbl.location()))
    fs, warehouse = pafs.FileSystem.from_uri(settings.warehouse)
    roots.append(tiles_root(warehouse))
    doomed, report.kept_recent = _unreferenced(fs, warehouse, roots, referenced, cutoff.timestamp())
    report.files = sorted(doomed)
    report.bytes = _delete(fs, doomed, dry_run)
    log.info("vacuum%s: %d snapshots expired, %d files (%d bytes) %s", " (dry run)" if dry_run else "",
             report.snapshots_expired, len(report.files), report.bytes, "to delete" if dry_run else "deleted")
    return report


def snapshots_to_expire(metadata, cutoff_ms: int, keep_last: int, protected: set[int]) -> list[int]:
    """Ids of the snapshots older than ``cutoff_ms`` that nothing keeps, oldest first."""
    snaps = sorted(metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number or 0))
    keep = {s.snapshot_id for s in snaps[-keep_last:]} | set(protected)
    keep |= {ref.snapshot_id for ref in metadata.refs.values()}  # branch heads (the current one) and tags
    if metadata.current_snapshot_id is not None:
        keep.add(metadata.current_snapshot_id)
    return [s.snapshot_id for s in snaps if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep]


def _expire(lake: Lake, ident: str, cutoff_ms: int, keep_last: int, protected: set[int], dry_run: bool) -> list[int]:
    """Expire (or, dry, only list) the snapshots of one table that nothing keeps."""
    if dry_run:
        return snapshots_to_expire(lake.catalog.load_table(ident).metadata, cutoff_ms, keep_last, protected)

    def commit() -> list[int]:  # a fresh load per attempt: another writer may have committed meanwhile
        tbl = lake.catalog.load_table(ident)
        ids = snapshots_to_expire(tbl.metadata, cutoff_ms, keep_last, protected)
        if ids:
            tbl.maintenance.expire_snapshots().by_ids(ids).commit()
        return ids

    ids = commit_with_retry(commit, f"expire snapshots of {ident}")
    if ids:
        log.info("%s: expired %d snapshots", ident, len(ids))
    return ids


def referenced_files(tbl, exclude: set[int] = frozenset()) -> set[str]:
    """Filesystem paths of every file the table's snapshots (less ``exclude``) and metadata reference."""
    meta, io = tbl.metadata, tbl.io
    uris = {tbl.metadata_location} | {entry.metadata_file for entry in meta.metadata_log}
    for stats in (*getattr(meta, "statistics", ()), *getattr(meta, "partition_statistics", ())):
        uris.add(stats.statistics_path)
    seen: set[str] = set()
    for snap in meta.snapshots:
        if snap.snapshot_id in exclude:
            continue
        uris.add(snap.manifest_list)
        for manifest in snap.manifests(io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            uris.update(entry.data_file.file_path for entry in manifest.fetch_manifest_entry(io, discard_deleted=True))
    uris |= seen
    return {fs_path(uri) for uri in uris}


def referenced_tiles(tbl, exclude: set[int] = frozenset()) -> set[str]:
    """Filesystem paths of the tile files named (column ``path``) by any snapshot of the table (less ``exclude``)."""
    paths: set[str] = set()
    for snap in tbl.metadata.snapshots:
        if snap.snapshot_id not in exclude:
            rows = tbl.scan(snapshot_id=snap.snapshot_id, selected_fields=("path",)).to_arrow()
            paths |= {fs_path(p) for p in rows.column("path").to_pylist()}
    return paths


def fs_path(uri: str) -> str:
    """A ``file://`` or ``s3://`` URI (or a bare path) as the path ``pyarrow.fs`` lists it under."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return posixpath.normpath(unquote(parsed.path))
    return posixpath.normpath(f"{parsed.netloc}{unquote(parsed.path)}")


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path.startswith(root + "/")


def _unreferenced(fs, warehouse: str, roots: list[str], referenced: set[str],
                  cutoff_s: float) -> tuple[dict[str, int], int]:
    """Unreferenced files older than the cutoff under the tables' folders: path -> size; and how many were too young."""
    warehouse = posixpath.normpath(warehouse)
    groups: dict[str, list] = defaultdict(list)  # a staging generation, or a single file
    for root in roots:
        if not _inside(root, warehouse):
            log.warning("table folder %s is outside the warehouse %s: not vacuumed", root, warehouse)
            continue
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            path = posixpath.normpath(info.path)
            if info.type == pafs.FileType.File and _inside(path, warehouse):
                groups[_group(root, path, tiles_root(warehouse))].append(info)
    doomed, recent = {}, 0
    for members in groups.values():
        if any(posixpath.normpath(i.path) in referenced for i in members):
            continue
        young = sum(1 for i in members if i.mtime is None or i.mtime.timestamp() >= cutoff_s)
        if young:
            recent += young
            continue
        doomed.update({posixpath.normpath(i.path): i.size for i in members})
    return doomed, recent


def tiles_root(warehouse: str) -> str:
    """The folder of tile generations in a warehouse (a filesystem path)."""
    return posixpath.join(posixpath.normpath(warehouse), TILES_FOLDER)


def _group(root: str, path: str, tiles: str) -> str:
    """The generation folder holding ``path`` (extraction staging under a table, or tiles), or ``path`` itself."""
    root = root.rstrip("/")
    depth, prefix = (2, root + "/") if root == tiles else (1, f"{root}/{STAGING}/")
    if path.startswith(prefix):
        parts = path[len(prefix):].split("/")
        if len(parts) > depth:
            return prefix + "/".join(parts[:depth])
    return path


def _delete(fs, doomed: dict[str, int], dry_run: bool) -> int:
    """Delete the files (unless dry); return the bytes reclaimed (or that would be)."""
    if dry_run:
        return sum(doomed.values())
    freed = 0
    for path, size in sorted(doomed.items()):
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            continue  # another vacuum got there first
        freed += size
    return freed
