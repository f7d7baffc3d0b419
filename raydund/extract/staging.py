"""Staging generations of an extraction job: where its workers write, and what a re-run resumes.

A job's files go to ``<activations>/data/staging/<key>-g<n>``. Each finished shard leaves
``_done/shard-N.json``; ``_plan`` fingerprints how the sentences were cut into shards;
``_lease`` is rewritten by every run that uses the generation; ``_sealed`` marks one whose
files were handed to a commit, never written again. Nothing here deletes a file:
``raydund vacuum`` reclaims generations no retained snapshot references.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time

import pyarrow.fs as pafs

from raydund.extract.actor import split_uri

log = logging.getLogger(__name__)


def finished_shards(fs, root: str) -> dict[int, dict]:
    """Shard number -> its ``_done`` record, for every shard generation ``root`` has finished."""
    from pyarrow.fs import FileSelector, FileType

    done = {}
    infos = fs.get_file_info(FileSelector(f"{root}/_done", allow_not_found=True))
    for info in infos:
        if info.type == FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as fh:
                record = json.loads(fh.read())
            done[record["shard"]] = record
    return done


#: Marker of a generation whose files were handed to a commit: never written again.
SEALED = "_sealed"
#: Marker rewritten by every run that uses a generation (its mtime keeps ``raydund vacuum`` off it).
LEASE = "_lease"
#: The generation's :func:`shard_plan`: only a run cut into the same shards resumes it.
PLAN = "_plan"


def generations(fs, staging: str, key: str) -> list[tuple[int, str]]:
    """``(number, folder name)`` of every generation of job ``key``, oldest first.

    Generation folders are ``<key>-g<n>``; a bare ``<key>`` (lakes written before
    generations existed) is generation 0.
    """
    found = []
    for info in fs.get_file_info(pafs.FileSelector(staging, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        if info.base_name == key:
            found.append((0, key))
        elif match := re.fullmatch(rf"{re.escape(key)}-g(\d+)", info.base_name):
            found.append((int(match.group(1)), info.base_name))
    return sorted(found)


def shard_plan(shards: list[dict]) -> str:
    """Fingerprint of which sentences each shard holds (``shard_words`` is not in the job key)."""
    ids = [list(map(int, s["sentence_id"])) for s in shards]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def choose_generation(staging_uri: str, key: str, shards: list[dict], fresh: bool) -> tuple[str, dict[int, dict]]:
    """The staging folder this run writes to, and the shards already finished there.

    A run resumes the newest generation of its key when it was cut into the same shards
    and is either unsealed or already complete (then nothing is written, the same files
    are committed again); otherwise, or with ``fresh``, it starts a new generation.
    Nothing is ever deleted: a file a snapshot may reference stays where it is, and
    ``raydund vacuum`` reclaims generations no retained snapshot references.

    Parameters
    ----------
    staging_uri : str
        ``<activations table location>/data/staging``.
    key : str
        The job key.
    shards : list of dict
        This run's shards (:func:`raydund.extract.job.make_shards`).
    fresh : bool
        Start a new generation even when the newest one could be resumed.

    Returns
    -------
    tuple of (str, dict)
        The generation's URI and its finished shards (shard -> ``_done`` record).
    """
    fs, staging = split_uri(staging_uri)
    gens = generations(fs, staging, key)
    plan = shard_plan(shards)
    if gens and not fresh:
        done = _resumable(fs, f"{staging}/{gens[-1][1]}", plan, len(shards))
        if done is not None:
            touch(fs, f"{staging}/{gens[-1][1]}/{LEASE}")
            log.info("job %s: resuming generation %s (%d of %d shards finished)", key, gens[-1][1],
                     len(done), len(shards))
            return f"{staging_uri}/{gens[-1][1]}", done
    name = f"{key}-g{(gens[-1][0] if gens else 0) + 1}"
    fs.create_dir(f"{staging}/{name}/_done", recursive=True)
    touch(fs, f"{staging}/{name}/{LEASE}")
    touch(fs, f"{staging}/{name}/{PLAN}", plan)
    log.info("job %s: new staging generation %s", key, name)
    return f"{staging_uri}/{name}", {}


def _resumable(fs, root: str, plan: str, n_shards: int) -> dict[int, dict] | None:
    """Finished shards of generation ``root`` when this run may use it, else None."""
    try:
        with fs.open_input_stream(f"{root}/{PLAN}") as fh:
            if fh.read().decode() != plan:
                return None
    except FileNotFoundError:
        return None
    done = finished_shards(fs, root)
    sealed = fs.get_file_info(f"{root}/{SEALED}").type != pafs.FileType.NotFound
    if sealed and set(done) != set(range(n_shards)):
        return None  # a sealed generation is never written again
    return done


def touch(fs, path: str, text: str | None = None) -> None:
    """Write ``text`` (default: the time now) to ``path``: a marker whose mtime says it is in use."""
    with fs.open_output_stream(path) as fh:
        fh.write((text if text is not None else str(time.time())).encode())
