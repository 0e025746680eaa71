"""The size of each read of a streamed body follows how fast its client takes them (gateway/http/send.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from gateway.edge.protocol import GuardedHttpToolsProtocol
from gateway.http import send
from gateway.http.send import MIN_READ, TRUSTED_AFTER, Pace

KIB = 1024


def trusted(largest: int = 512 * KIB) -> Pace:
    """A pace past the bytes the kernel takes at once, still at the smallest read."""
    pace = Pace(largest)
    pace.took(TRUSTED_AFTER - 1, 0.00005)  # taken at once, one byte short of trusting it
    assert pace() == MIN_READ
    return pace


def test_reads_stay_small_while_the_kernel_may_be_taking_everything_at_once() -> None:
    pace = Pace(512 * KIB)
    sent = 0
    while sent + pace() < TRUSTED_AFTER:
        sent += pace()
        pace.took(pace(), 0.00005)  # at once: the kernel's buffer, whoever the client is
        assert pace() == MIN_READ
    pace.took(pace(), 0.00005)
    assert pace() == 2 * MIN_READ


def test_a_fast_client_gets_reads_that_double_up_to_the_chunk_size() -> None:
    pace = trusted()
    sizes = []
    for _ in range(8):
        sizes.append(pace())
        pace.took(pace(), 0.00005)  # the socket took it at once
    assert sizes[:4] == [64 * KIB, 128 * KIB, 256 * KIB, 512 * KIB]
    assert pace() == 512 * KIB  # and no more


def test_after_a_piece_waited_the_reads_stay_small_until_the_kernels_buffer_went_out_again() -> None:
    pace = trusted()
    pace.took(pace(), 0.00005)
    assert pace() == 2 * MIN_READ
    pace.took(pace(), 5.0)  # the socket was full: the client is slow
    assert pace() == MIN_READ
    taken = 0
    while taken + pace() < TRUSTED_AFTER:  # the woken socket takes a burst at once
        taken += pace()
        pace.took(pace(), 0.00005)
        assert pace() == MIN_READ


def test_a_slow_client_keeps_the_smallest_reads() -> None:
    pace = trusted()
    for _ in range(5):
        pace.took(pace(), 0.1)  # 64 KiB in a tenth of a second: 640 KiB/s
    assert pace() == MIN_READ


def test_a_client_that_slows_down_falls_at_once_to_what_it_takes() -> None:
    pace = trusted()
    for _ in range(4):
        pace.took(pace(), 0.00005)
    assert pace() == 512 * KIB
    pace.took(512 * KIB, 0.1)  # 5 MiB/s now: about 100 KiB per 20 ms
    assert pace() == 64 * KIB
    pace.took(pace(), 0.01)  # 6.4 MiB/s again, or a woken socket taking a burst: not trusted yet
    assert pace() == 64 * KIB
    pace.took(TRUSTED_AFTER, 0.1)  # more than the kernel buffers, at 40 MiB/s
    assert pace() == 128 * KIB
    pace.took(pace(), 1.0)
    assert pace() == MIN_READ


def test_a_chunk_size_below_the_smallest_read_is_raised_to_it() -> None:
    assert Pace(4 * KIB)() == MIN_READ


def test_the_kernels_buffer_is_read_from_the_host_or_taken_as_linuxs_default(tmp_path: Path) -> None:
    wmem = tmp_path / "tcp_wmem"
    wmem.write_text("4096\t16384\t6291456\n")
    assert send._kernel_send_buffer(str(wmem)) == 6291456
    wmem.write_text("garbage\n")
    assert send._kernel_send_buffer(str(wmem)) == 4 * 1024 * 1024
    assert send._kernel_send_buffer(str(tmp_path / "missing")) == 4 * 1024 * 1024


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_write_the_socket_cannot_take_whole_pauses_the_sender_until_the_socket_has_it(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """So a slow download holds one piece besides the kernel's buffer (transports wait for 64 KiB by default)."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("no request is made")

    async def main() -> None:
        config = uvicorn.Config(app, http=GuardedHttpToolsProtocol, lifespan="off")
        config.load()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        protocol = GuardedHttpToolsProtocol(config, ServerState(), {})
        transport, _ = await asyncio.get_running_loop().create_connection(lambda: protocol, sock=ours)
        try:
            while not protocol.flow.write_paused:  # fill the kernel's buffer, then a little more
                transport.write(b"x" * 1024)
            assert transport.get_write_buffer_size() <= 1024  # paused with less than one write buffered
            while transport.get_write_buffer_size():
                with contextlib.suppress(BlockingIOError):
                    theirs.recv(1 << 20)
                await asyncio.sleep(0)
            assert not protocol.flow.write_paused  # resumed once the socket has all of it
        finally:
            transport.close()
            theirs.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
