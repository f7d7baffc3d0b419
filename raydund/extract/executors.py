"""Where an extraction job's shards are encoded: in this process, or on a Ray Data actor pool.

Both run :class:`~raydund.extract.actor.ExtractActor` (the in-process path calls it
directly), so they write the same files and shard markers; :func:`choose_executor`
decides. The pool is re-run on the shards still missing after a system failure (a node
or actor lost beyond Ray Data's own retries); user errors are never retried.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from raydund.errors import UserError
from raydund.extract.actor import RECORD_KEYS, ExtractActor
from raydund.extract.staging import finished_shards

log = logging.getLogger(__name__)


#: Times the driver re-runs the actor pool on the shards still missing after a system failure
#: (a node or actor lost beyond Ray Data's own retries). User errors are never retried.
POOL_ATTEMPTS = 3

#: Where shards are encoded (:attr:`~raydund.extract.job.ExtractConfig.executor`).
EXECUTORS = ("auto", "local", "ray")


def ensure_ray():
    """Connect to ``RAY_ADDRESS`` if set, else start (or reuse) a local Ray."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        # worker output (model loading bars) stays in Ray's logs unless asked for
        ray.init(address=address, log_to_driver=log.isEnabledFor(logging.DEBUG),
                 include_dashboard=False if not address else None)
    return ray


def choose_executor(cfg) -> tuple[str, str]:
    """``("local" | "ray", why)``: where this job's shards are encoded.

    ``auto`` runs in this process when nothing asks for Ray: no cluster is attached
    (``RAY_ADDRESS`` unset, and a Ray this process already started has one node) and the
    pool has one actor. The memory plan of that case is the pool's: one model copy and one
    shard's row groups on this machine, in this process instead of an actor beside it
    (one process fewer), so whatever fits the one-actor pool fits here. What the local path
    saves is the fixed cost of starting Ray, an actor and shipping the shards (seconds,
    which dominate jobs under ~50k words). A job on a cluster, with several actors, or
    asked for with ``executor="ray"`` uses the pool, which also retries lost actors.
    """
    if cfg.executor != "auto":
        return cfg.executor, f"executor={cfg.executor}"
    if cfg.pool_size > 1:
        return "ray", f"a pool of {cfg.pool_size} actors"
    if os.environ.get("RAY_ADDRESS"):
        return "ray", "a Ray cluster is attached (RAY_ADDRESS)"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and len(ray.nodes()) > 1:
        return "ray", f"a Ray cluster of {len(ray.nodes())} nodes is attached"
    return "local", "no cluster attached, one actor"


def _run_local(cfg, spec, files_uri, pending, done, progress) -> None:
    """Encode the pending shards in this process with the pool's own actor class (same files, same markers)."""
    import torch
    from tqdm import tqdm

    threads = torch.get_num_threads()
    device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    try:
        actor = ExtractActor(spec, _actor_job(cfg, spec, files_uri), threads=cfg.threads, device=device)
        with tqdm(total=sum(len(w) for s in pending for w in s["words"]), unit="word",
                  desc=f"extract {cfg.corpus}/{cfg.split}", disable=not progress, dynamic_ncols=True) as bar:
            for shard in pending:
                done[shard["shard"]] = actor.write_shard(shard)
                bar.update(sum(len(w) for w in shard["words"]))
    finally:
        torch.set_num_threads(threads)  # the actor sized torch's threads for itself; this process goes on


def _actor_job(cfg, spec, files_uri: str) -> dict:
    """What every actor of the job needs besides the model (see :class:`ExtractActor`)."""
    return {
        "model_name": spec.name, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit,
        "aggregation": cfg.aggregation, "dtype": cfg.dtype, "batch_size": cfg.batch_size,
        "max_tokens": cfg.max_tokens, "files_uri": files_uri, "allow_nonfinite": cfg.allow_nonfinite,
    }


def _run_with_retries(cfg, spec, files_uri, shards, pending, done, fs, root, progress) -> int:
    """Run the pool until every shard has its ``_done`` marker; return how many re-runs it took.

    Ray Data already restarts a dead actor and retries its call; this covers what is left
    (the pool giving up, a node lost): the markers on storage say which shards finished.
    """
    retried = 0
    while pending:
        try:
            _run_pool(cfg, spec, files_uri, pending, done, progress)
        except UserError:
            raise
        except Exception as exc:
            if retried + 1 >= POOL_ATTEMPTS or not _is_ray_failure(exc):
                raise
            retried += 1
            log.warning("extraction pool failed (%s); re-running the missing shards (attempt %d of %d)",
                        type(exc).__name__, retried + 1, POOL_ATTEMPTS)
        done.update(finished_shards(fs, root))
        pending = [s for s in shards if s["shard"] not in done]
    return retried


def _is_ray_failure(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, (ray.exceptions.RayError, ConnectionError, TimeoutError))


def _run_pool(cfg, spec, files_uri, pending, done, progress):
    """Push pending shards through the actor pool; record each finished shard in ``done``."""
    from tqdm import tqdm

    ray = ensure_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_rich_progress_bars = False
    job = _actor_job(cfg, spec, files_uri)
    ds = ray.data.from_items(pending, override_num_blocks=len(pending)).map_batches(
        ExtractActor,
        fn_constructor_kwargs={"model": spec, "job": job, "threads": cfg.threads},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.pool_size),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
    )
    shard_words = {s["shard"]: sum(len(w) for w in s["words"]) for s in pending}
    with tqdm(total=sum(shard_words.values()), unit="word", desc=f"extract {cfg.corpus}/{cfg.split}",
              disable=not progress, dynamic_ncols=True) as bar:
        try:
            for row in ds.iter_rows():
                done[row["shard"]] = {k: _plain(row[k]) for k in RECORD_KEYS}
                bar.update(shard_words[row["shard"]])
        except ray.exceptions.RayError as exc:
            user = _user_error_from(exc)
            if user is not None:
                raise user from None
            raise


def _plain(value):
    """A Ray Data row value as JSON-like Python (list columns may come back as numpy arrays)."""
    return value.tolist() if hasattr(value, "tolist") else value


def _user_error_from(exc: Exception) -> UserError | None:
    """A worker's UserError reaches the driver only as text inside Ray's error: recover it."""
    found = re.search(r"raydund\.errors\.(?:UserError|CorpusError): (.+)", str(exc))
    return UserError(found.group(1)) if found else None


def run_shards(cfg, spec, files_uri, shards, pending, done, fs, root, progress) -> tuple[str, int]:
    """Encode the pending shards where :func:`choose_executor` says; ``(executor, pool re-runs)``."""
    executor, why = choose_executor(cfg)
    log.info("extracting %d shards %s (%s)", len(pending), "in this process" if executor == "local" else
             f"on a Ray pool of {cfg.pool_size}", why)
    if executor == "local":
        _run_local(cfg, spec, files_uri, pending, done, progress)
        return executor, 0
    return executor, _run_with_retries(cfg, spec, files_uri, shards, pending, done, fs, root, progress)
