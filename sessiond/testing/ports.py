"""Free ports for servers started as separate processes, and a check that the listener is ours.

A port found free (bound to port 0, then released) is only free *a moment ago*: on a shared machine
other test runs bind ports at the same time, and one of them can take it before the child process
binds it. Then the child exits saying the port is in use, or — worse — a check that only connects
finds the *other* program listening and the test talks to a stranger. So a test that starts a server
process on such a port waits until :func:`listening` says that process holds a listening socket on
it, and starts again on a new port when the server exits saying the port is taken. (Tests and the
examples' demos both use this module, which is why it lives in the package.)
"""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["free_port", "listening"]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (see the module docstring)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening_inodes(pid: int, port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (any address) in ``pid``'s network namespace."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as rows:
            next(rows, None)  # the header
            for row in rows:
                fields = row.split()
                # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
                if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a socket listening on TCP ``port`` (False once it is gone).

    Read from /proc: the listening sockets on the port, then the process's open descriptors."""
    try:
        inodes = _listening_inodes(pid, port)
        if not inodes:
            return False
        wanted = {f"socket:[{inode}]" for inode in inodes}
        fds = f"/proc/{pid}/fd"
        for fd in os.listdir(fds):
            with contextlib.suppress(OSError):  # closed since the listing
                if os.readlink(f"{fds}/{fd}") in wanted:
                    return True
    except (FileNotFoundError, ProcessLookupError):
        return False
    return False
