"""Free ports and child processes on this machine: what a launcher of local processes needs.

Shared by the local deployments (gateway.tools.launcher) and by a pod that starts an
MLServer beside it (gateway.pod.mlserver.process).
"""

from __future__ import annotations

import ctypes
import random
import signal
import socket
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_handed_out: set[int] = set()


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the process that started it dies (runs
    in the child between fork and exec)."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, below the kernel's ephemeral range.

    Ports from bind(0) come from the ephemeral range, where an outgoing
    connection may take one before our server binds it; these cannot.
    """
    low, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        if port in _handed_out:
            continue
        with socket.socket(family) as sock:
            try:
                sock.bind((host.strip("[]"), port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
