"""What /proc says about a process: open descriptors, memory, children, its TCP connections."""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .http import HOST


def open_fds_to(pid: int, path: Path) -> int:
    """How many of `pid`'s file descriptors point at `path` (or at it deleted)."""
    target = str(path)
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            link = os.readlink(entry)
        except OSError:
            continue  # closed meanwhile
        if link == target or link == target + " (deleted)":
            count += 1
    return count


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server side of the 127.0.0.1 connection server_port <- client_port."""
    local = f"{socket.inet_aton(HOST)[::-1].hex().upper()}:{server_port:04X}"
    remote_port = f":{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2].endswith(remote_port):
            return int(fields[9])
    return None


def connection_owner(pids: list[int], server_port: int, client_port: int) -> int:
    """Which of `pids` holds the accepted socket of the connection from `client_port`."""
    inode = _socket_inode(server_port, client_port)
    assert inode, f"no server socket for the connection from port {client_port}"
    wanted = f"socket:[{inode}]"
    for pid in pids:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(entry) == wanted:
                    return pid
    raise AssertionError(f"none of {pids} holds {wanted}")


# -- a process's TCP connections ---------------------------------------

TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True)
class TcpSocket:
    """One row of /proc/<pid>/net/tcp that belongs to the process (by socket inode)."""

    inode: int
    local_port: int
    remote_port: int
    state: str
    tx_queue: int  # bytes sent and not yet acknowledged
    rx_queue: int  # bytes received and not yet read by the process


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets `pid` holds open (from /proc/<pid>/fd)."""
    inodes = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(entry)
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def tcp_sockets_to(pid: int, remote_port: int) -> list[TcpSocket]:
    """`pid`'s TCP sockets whose peer is `remote_port`, in any state, while it holds them open."""
    owned = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, queues, inode = fields[1], fields[2], fields[3], fields[4], int(fields[9])
            if inode not in owned or int(remote.rpartition(":")[2], 16) != remote_port:
                continue
            tx, _, rx = queues.partition(":")
            found.append(
                TcpSocket(
                    inode=inode,
                    local_port=int(local.rpartition(":")[2], 16),
                    remote_port=remote_port,
                    state=TCP_STATES.get(state, state),
                    tx_queue=int(tx, 16),
                    rx_queue=int(rx, 16),
                )
            )
    return found


def accept_queue(pid: int, port: int) -> int:
    """Connections waiting on `pid`'s listening socket at `port` (a stopped server cannot accept them).

    For a listening socket the kernel reports the accept-queue length as rx_queue.
    """
    owned = socket_inodes(pid)
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) in owned and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                return int(fields[4].partition(":")[2], 16)
    raise AssertionError(f"process {pid} does not listen on port {port}")


def bytes_read(pid: int) -> int:
    """`rchar` of /proc/<pid>/io: every byte the process has read, sockets included."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")
