"""The probe actors' gloo rendezvous listens on loopback when the group is on one node."""

import socket

import psutil

from raydund.probes.shards import LOOPBACK, interface_of, rendezvous, rendezvous_host


def test_one_node_means_loopback():
    assert rendezvous_host(["n1", "n1", "n1"]) == LOOPBACK == "127.0.0.1"
    assert rendezvous_host(["n1"]) == LOOPBACK
    assert rendezvous_host(["n1", "n2", "n1"]) is None  # several nodes: the first actor's node IP
    assert interface_of(LOOPBACK) is not None and interface_of("203.0.113.77") is None


def _listening() -> set:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp") if c.status == "LISTEN"}


def test_loopback_group_listens_on_loopback_only(monkeypatch):
    import torch
    import torch.distributed as dist

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)  # restored after the test
    before = _listening()
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    endpoint = f"{LOOPBACK}:{listener.getsockname()[1]}"
    store = rendezvous(endpoint, 0, 1, listener)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        t = torch.ones(3)
        dist.all_reduce(t)
        opened = _listening() - before
        assert opened and {ip for ip, _ in opened} == {LOOPBACK}, opened  # the store and gloo: no wildcard
        assert (LOOPBACK, listener.getsockname()[1]) in opened
    finally:
        dist.destroy_process_group()
        listener.close()
