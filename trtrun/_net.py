"""Small network helpers shared by the servers and their tests."""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on at `host` now ("" for every interface), taken below the kernel's
    ephemeral range: outgoing connections (any HTTP client) get their local ports from that range, so a port picked
    there can be taken by a client socket before the server binds it."""
    lo = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, lo - 12000), max(1025, lo))
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # every try taken: the kernel's choice
        s.bind((host, 0))
        return s.getsockname()[1]
