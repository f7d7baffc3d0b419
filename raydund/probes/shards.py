"""Probe banks over layer blocks held by Ray actors: no process holds every layer.

A probe job with ``workers`` > 1 starts that many :class:`LayerShard` actors. Each reads
a contiguous block of layers of the task's train/dev/test rows from the lakehouse once,
and they join one ``torch.distributed`` (gloo) group. A bank of probes is then trained
by all of them in step: a probe's scores are a sum over its neurons, so each actor
multiplies the neurons it holds and an all-reduce sums the partial scores every step
(:class:`~raydund.probes.model.Shard`). The driver holds only labels and words.

:class:`ShardedSplits` gives the analyses (:mod:`raydund.probes.analysis`) the methods
of in-process :class:`~raydund.probes.analysis.Splits`, so the same analysis code runs
either way. Per step the actors exchange ``batch x probes x classes`` floats (the
scores) and ``probes`` floats (the squared norms), not activations or weights.

The group's rendezvous (a TCP store) and gloo's own sockets have no authentication.
When every actor runs on one node they listen on 127.0.0.1 only (:func:`rendezvous_host`);
across nodes they listen on the first actor's node IP, which must be a private network
(see ``infra/README.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import os
import socket

import numpy as np

from raydund.config import Settings
from raydund.probes.analysis import ProbeSettings, Splits
from raydund.probes.model import ProbeBank

PARTS = ("train", "dev", "test")
#: Where a one-node group listens.
LOOPBACK = "127.0.0.1"
#: How long the rendezvous waits for every member (torch's default process-group timeout).
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=30)


def rendezvous_host(node_ids: list[str]) -> str | None:
    """The address the gloo group listens on: loopback when every actor is on one node.

    Parameters
    ----------
    node_ids : list of str
        The Ray node id of each actor.

    Returns
    -------
    str or None
        ``127.0.0.1`` for one node; None (the first actor's node IP) for several.
    """
    return LOOPBACK if len(set(node_ids)) <= 1 else None


def interface_of(address: str) -> str | None:
    """The network interface holding ``address`` (``lo`` for 127.0.0.1 on Linux), None if none does."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return None


def rendezvous(endpoint: str, rank: int, world: int, listener: socket.socket | None = None):
    """The group's TCP store, its server listening on ``listener`` (rank 0) and gloo pinned to that interface.

    torch's store would otherwise listen on every interface whatever address it is given;
    rank 0 hands it a socket already bound to the rendezvous address. ``GLOO_SOCKET_IFNAME``
    makes gloo's own connections use the interface that holds that address.

    Parameters
    ----------
    endpoint : str
        ``host:port`` of the store (``listener``'s address).
    rank, world : int
    listener : socket.socket, optional
        Rank 0's socket bound to ``endpoint``; None for the other ranks.
    """
    import torch.distributed as dist

    host, port = endpoint.rsplit(":", 1)
    interface = interface_of(host)
    if interface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    fd = listener.fileno() if listener is not None else None
    return dist.TCPStore(host, int(port), world, listener is not None, RENDEZVOUS_TIMEOUT, master_listen_fd=fd)


def layer_blocks(n_layers: int, workers: int) -> list[list[int]]:
    """``workers`` contiguous, near-equal blocks of ``range(n_layers)`` (no empty block)."""
    workers = max(1, min(int(workers), n_layers))
    return [block.tolist() for block in np.array_split(np.arange(n_layers), workers)]


class LayerShard:
    """A Ray actor holding a block of layers of train/dev/test and its part of every bank.

    Parameters
    ----------
    settings : Settings
        Where the lakehouse is.
    model, corpus, unit : str
    parts : dict
        ``{"train"|"dev"|"test": (split name, row indices or None)}``: which stored rows
        make each part (dev carved from train, a train limit).
    layers : list of int
        The layers this actor holds.
    columns : numpy.ndarray
        Their positions on the stacked neuron axis of all layers.
    threads : int
        torch threads.
    """

    def __init__(self, settings: Settings, model: str, corpus: str, unit: str, parts: dict, layers: list[int],
                 columns: np.ndarray, threads: int = 1):
        import torch

        from raydund.lake import Lake
        from raydund.probes.data import read_layers

        torch.set_num_threads(max(1, int(threads)))
        lake = Lake(settings)
        self.columns = np.asarray(columns)
        self.X = {}
        read = {}
        for part, (split, rows) in parts.items():
            if split not in read:  # dev carved from train reads train once
                read[split] = read_layers(lake, model, corpus, split, layers, unit)[0]
            self.X[part] = read[split] if rows is None else read[split][rows]
        del read
        self.banks: dict[int, ProbeBank] = {}
        self.shard, self.rank, self.listener = None, 0, None

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def endpoint(self, host: str | None = None) -> str:
        """``host:port`` for the group's rendezvous (asked of the first actor only), bound until ``join``.

        Parameters
        ----------
        host : str, optional
            The address to listen on (default: this node's IP).
        """
        import ray

        host = host or ray.util.get_node_ip_address()
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.listener.bind((host, 0))
        return f"{host}:{self.listener.getsockname()[1]}"

    def join(self, endpoint: str, rank: int, world: int) -> int:
        """Join the gloo group; return the rows held (a cheap readiness check)."""
        import torch.distributed as dist

        from raydund.probes.model import Shard

        self.rank = rank
        if world > 1:
            store = rendezvous(endpoint, rank, world, self.listener if rank == 0 else None)
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        self.shard = Shard(self.columns, dist.all_reduce if world > 1 else (lambda t: None), rank == 0)
        return sum(len(X) for X in self.X.values())

    def fit(self, key: int, bank: ProbeBank, y: np.ndarray, n_classes: int | None) -> None:
        self.banks[key] = bank.fit(self.X["train"], y, n_classes, shard=self.shard)

    def predict(self, key: int, part: str) -> np.ndarray | None:
        """Every actor takes part; the first returns the predictions (all have the same sums)."""
        pred = self.banks[key].predict(self.X[part], shard=self.shard)
        return pred if self.rank == 0 else None

    def weights(self, key: int, probe: int) -> np.ndarray:
        return self.banks[key].coef_[probe]

    def intercept(self, key: int, probe: int) -> np.ndarray:
        return self.banks[key].intercept_[probe]

    def linear_scores(self, part: str, neurons: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """This actor's share of ``X[:, neurons] @ coef`` (``neurons`` on the stacked axis)."""
        mine = np.isin(neurons, self.columns)
        local = np.searchsorted(self.columns, neurons[mine])
        return self.X[part][:, local].astype(np.float64) @ coef[mine]

    def class_mean_scores(self, y: np.ndarray) -> np.ndarray:
        from raydund.probes.rank import probeless_scores

        return probeless_scores(self.X["train"], y)

    def drop(self, key: int) -> None:
        self.banks.pop(key, None)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def gather(refs: list) -> list:
    """``ray.get`` of the actors' calls, raising as soon as one fails.

    The others may be waiting in a collective for the failed one, so a plain ``ray.get``
    of the list (in order) could wait forever; the caller then ends the group.
    """
    import ray

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)  # raises the actor's error
    return ray.get(refs)


@dataclasses.dataclass(eq=False)
class ShardedSplits(Splits):
    """:class:`Splits` whose activations are held by :class:`LayerShard` actors.

    Build with :func:`start`; call :meth:`close` when done (it ends the actors).
    """

    actors: list = dataclasses.field(default_factory=list)
    _keys: itertools.count = dataclasses.field(default_factory=itertools.count)

    def fit(self, settings: ProbeSettings, masks: np.ndarray, y: np.ndarray | None = None,
            n_classes: int | None = None) -> ProbeBank:
        if y is None:
            y, n_classes = self.targets(self.train), self.n_classes
        bank = settings.bank(masks)
        bank.key_ = next(self._keys)  # the actors keep the fitted parts under this key
        gather([a.fit.remote(bank.key_, bank, y, n_classes) for a in self.actors])
        return bank

    def predict(self, bank: ProbeBank, part: str) -> np.ndarray:
        return gather([a.predict.remote(bank.key_, part) for a in self.actors])[0]

    def weights(self, bank: ProbeBank, probe: int) -> np.ndarray:
        return np.concatenate(gather([a.weights.remote(bank.key_, probe) for a in self.actors]), axis=0)

    def intercept(self, bank: ProbeBank, probe: int) -> np.ndarray:
        import ray

        return ray.get(self.actors[0].intercept.remote(bank.key_, probe))  # the same on every actor

    def linear_scores(self, part: str, neurons: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        neurons = np.asarray(neurons)
        parts = gather([a.linear_scores.remote(part, neurons, coef) for a in self.actors])
        return (np.sum(parts, axis=0) + intercept).astype(np.float32)

    def class_mean_scores(self) -> np.ndarray:
        y = self.targets(self.train)
        return np.concatenate(gather([a.class_mean_scores.remote(y) for a in self.actors]))

    def close(self) -> None:
        import ray

        try:
            ray.wait([a.close.remote() for a in self.actors], num_returns=len(self.actors), timeout=10)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []


def start(splits: Splits, settings: Settings, model: str, corpus: str, unit: str, parts: dict, workers: int
          ) -> ShardedSplits:
    """Start ``workers`` layer-block actors for ``splits`` (labels only) and join them in one group.

    The actors share Ray's CPUs (all must run at once: a collective waits for every
    member), each with that share of torch threads.
    """
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    cpus_per_worker, threads = min(1.0, cpus / workers), max(1, int(cpus // workers))
    widths = splits.train.widths
    offsets = np.concatenate([[0], np.cumsum(widths)])
    Actor = ray.remote(num_cpus=cpus_per_worker)(LayerShard)
    blocks = layer_blocks(len(widths), workers)
    actors = [Actor.remote(settings, model, corpus, unit, parts, block,
                           np.arange(offsets[block[0]], offsets[block[-1] + 1]), threads) for block in blocks]
    out = ShardedSplits(splits.train, splits.dev, splits.test, splits.classes, actors=actors)
    try:
        host = rendezvous_host(ray.get([a.node_id.remote() for a in actors]))
        endpoint = ray.get(actors[0].endpoint.remote(host))
        gather([a.join.remote(endpoint, rank, len(actors)) for rank, a in enumerate(actors)])
    except BaseException:
        out.close()
        raise
    return out


@contextlib.contextmanager
def held_by(splits: Splits, settings: Settings, model: str, corpus: str, unit: str, parts: dict, workers: int):
    """``splits`` served by ``workers`` layer-block actors inside the block (``splits`` itself for 1)."""
    if workers == 1:
        yield splits
        return
    sharded = start(splits, settings, model, corpus, unit, parts, workers)
    try:
        yield sharded
    finally:
        sharded.close()


__all__ = ["LayerShard", "ShardedSplits", "held_by", "layer_blocks", "rendezvous", "rendezvous_host", "start"]
