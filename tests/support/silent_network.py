"""A warehouse behind a network link that a test can make silent at the packet level.

Why not a user-space TCP proxy that simply stops copying bytes: the proxy terminates TCP, so its
kernel keeps acknowledging the client's keepalive probes (and the server's, on the other leg). Neither
end ever sees the silence, and the server's REFRESH goes on. What a worker sees when a switch dies or
a firewall drops a connection's state is different: packets vanish in both directions, with no FIN
and no RST. That is what this module produces.

Topology: a network namespace of our own, joined to the machine by a veth pair on a private /30. A
private PostgreSQL of the session's major version (``own_server.OwnServer``) runs inside the namespace
and listens on the far address; workers and tests reach it over TCP through the link, and observers
reach it through its Unix socket, which does not cross the link. ``silence()`` adds a blackhole route
on each side for the other side's address: every packet either end sends is discarded without an
error, as on a dead network. ``restore()`` removes the two routes. ``close()`` stops the server and
deletes the namespace and the link, also after a failure.

Needs root (``ip netns``, routes); the machine's own routes are never touched, only the /32 of the
far address, which exists nowhere else.
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
import uuid

from own_server import OwnServer

SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of SUBNET_POOL that no interface on the machine uses (parallel test runs pick others)."""
    used = _ip("-o", "-4", "addr", "show").stdout
    subnets = list(SUBNET_POOL.subnets(new_prefix=30))
    for _ in range(100):
        candidate = random.choice(subnets)
        if not any(str(host) in used for host in candidate.hosts()):
            return candidate
    raise RuntimeError(f"no free /30 left in {SUBNET_POOL} for a test network namespace")


class SilentNetwork:
    """A PostgreSQL server behind a link that ``silence()`` cuts at the packet level."""

    def __init__(self, major: int) -> None:
        self.name = f"mvr{uuid.uuid4().hex[:8]}"  # also the prefix of the veth names (15-char limit)
        self.host_if, self.far_if = f"{self.name}h", f"{self.name}w"
        subnet = _free_subnet()
        self.host_address, self.far_address = (str(a) for a in subnet.hosts())
        self.prefix = subnet.prefixlen
        self.silent = False
        self.server: OwnServer | None = None
        self._major = major

    def __enter__(self) -> SilentNetwork:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.far_if)
        _ip("link", "set", self.far_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_address}/{self.prefix}", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("addr", "add", f"{self.far_address}/{self.prefix}", "dev", self.far_if, netns=self.name)
        _ip("link", "set", self.far_if, "up", netns=self.name)
        _ip("link", "set", "lo", "up", netns=self.name)
        self.server = OwnServer(self._major, netns=self.name, tcp_address=self.far_address,
                                trusted_subnet=f"{self.host_address}/32")
        self.server.start()

    def tcp_dsn(self, dbname: str = "postgres") -> str:
        """How a worker reaches the server: over TCP, through the link."""
        return self.server.tcp_dsn(dbname)

    def socket_dsn(self, dbname: str = "postgres") -> str:
        """How an observer reaches the server while the link is silent: its Unix socket."""
        return self.server.dsn(dbname)

    def silence(self) -> None:
        """From now on every packet between the two ends is dropped, silently, in both directions."""
        _ip("route", "add", "blackhole", f"{self.far_address}/32")
        _ip("route", "add", "blackhole", f"{self.host_address}/32", netns=self.name)
        self.silent = True

    def restore(self) -> None:
        _ip("route", "del", "blackhole", f"{self.far_address}/32", check=False)
        _ip("route", "del", "blackhole", f"{self.host_address}/32", netns=self.name, check=False)
        self.silent = False

    def close(self) -> None:
        """Stop the server and remove every trace (routes, link, namespace); safe to call twice."""
        try:
            self.restore()
            if self.server is not None:
                self.server.stop()
                self.server = None
        finally:
            _ip("link", "del", self.host_if, check=False)  # deletes the peer too
            _ip("netns", "del", self.name, check=False)
