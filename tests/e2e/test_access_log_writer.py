"""The access log's writer: buffered off the request path, bounded, whole lines, nothing lost at SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from support.http import request
from support.keys import new_key
from support.processes import start_gateway, stop_process
from support.storage import P64K, Storage

from gateway.common.metrics import ACCESS_LOG_DROPPED
from gateway.edge.accesslog import AccessLog


def test_two_writers_on_one_pipe_never_interleave_a_line(tmp_path: Path) -> None:
    """Like two workers writing to a container's stdout: every line arrives whole, each writer's in order."""
    reading, writing = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(iter(lambda: os.read(reading, 1 << 16), b"")))
    reader.start()
    writers = [AccessLog(writing), AccessLog(writing)]
    for number in range(3000):
        for which, writer in enumerate(writers):
            writer.write({"time": writer.stamp(), "writer": which, "n": number, "pad": "x" * (number % 700)})
    for writer in writers:
        writer.close()
    os.close(writing)
    reader.join(30)
    os.close(reading)
    lines = [json.loads(line) for line in b"".join(received).splitlines()]  # a torn line would not parse
    for which in (0, 1):
        assert [line["n"] for line in lines if line["writer"] == which] == list(range(3000))
    assert all(line["time"].endswith("Z") for line in lines)


def test_a_blocked_output_never_stalls_the_caller_and_drops_are_counted() -> None:
    reading, writing = os.pipe()  # nobody reads: the writer thread blocks once the pipe is full
    writer = AccessLog(writing, max_buffered=256)
    before = ACCESS_LOG_DROPPED._value.get()
    try:
        done = threading.Event()

        def flood() -> None:
            for number in range(20000):
                writer.write({"time": writer.stamp(), "n": number, "pad": "y" * 200})
            done.set()

        thread = threading.Thread(target=flood)
        thread.start()
        assert done.wait(30), "write() blocked on a blocked output"
        thread.join()
        assert ACCESS_LOG_DROPPED._value.get() - before > 0
    finally:
        os.close(reading)  # the blocked write fails (EPIPE), the thread goes on
        writer.close()
        os.close(writing)


def test_no_line_is_lost_when_serve_is_terminated(storage: Storage, tmp_path: Path) -> None:
    gateway = start_gateway(storage.root, [new_key()], tmp_path, split_stderr=True)
    try:
        sent = 300
        for _ in range(sent):
            assert request(gateway.base_url, gateway.target(P64K)).status == 200
        os.kill(gateway.pid, signal.SIGTERM)  # at once: most lines are still in the buffer
        gateway.process.wait(30)
    finally:
        stop_process(gateway.process)
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")]
    assert sum(1 for line in lines if line["status"] == 200) == sent
