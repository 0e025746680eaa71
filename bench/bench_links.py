#!/usr/bin/env python3
"""Benchmark signed links and the link API (issue 5).

Starts the edge (2 workers) and the link API on a temporary storage, then
measures with wrk:

  1. the edge's request rate for a 64 KiB file through an unsigned legacy
     link and through a signed, expiring link to the same file, interleaved
     twice; the ratio is what a signature check costs (target: under 5%);
  2. the link API's issuing rate: single `POST /v1/links` calls, and
     `POST /v1/links/batch` with 1,000 paths (links per second).

Reuses bench.py's process and wrk helpers; prints a table and writes
bench/results/links-latest.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import bench as core

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "links-latest.json"
BATCH = 1000


def post_script(directory: Path, path: str, body: dict, token: str) -> Path:
    """A wrk Lua script that POSTs `body` as JSON with the bearer token."""
    script = directory / f"{path.strip('/').replace('/', '-')}.lua"
    script.write_text(
        f"wrk.method = 'POST'\n"
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        f"wrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.headers['Authorization'] = 'Bearer {token}'\n"
    )
    return script


def wrk(url: str, seconds: float, connections: int, script: Path | None = None) -> core.WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    result = core.WrkResult(command + [url])
    done = subprocess.run(result.command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    result.output = done.stdout + done.stderr
    core.parse_wrk(result.output, result)
    core.judge(result, done.returncode)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-links-") as tmp:
        work = Path(tmp)
        storage = work / "storage"
        storage.mkdir()
        (storage / "300").mkdir()
        (storage / "300" / "call.mp3").write_bytes(secrets.token_bytes(64 * core.KIB))
        key = secrets.token_bytes(32)
        bearer = secrets.token_urlsafe(32)
        edge_port, api_port = core.free_port(), core.free_port()
        env = core.gateway_env(key, storage)
        env.update(
            GATEWAY_PUBLIC_URL=f"http://{core.HOST}:{edge_port}",
            GATEWAY_API_CLIENTS=f"bench:{hashlib.sha256(bearer.encode()).hexdigest()}:/",
        )
        edge = core.Server(
            "edge",
            core.start(
                shlex.split(f"storage-gateway serve --host {core.HOST} --port {edge_port} --workers 2"),
                work / "edge.log",
                env=env,
            ),
            f"http://{core.HOST}:{edge_port}",
            {},
            "/healthz",
            work / "edge.log",
        )
        api = core.Server(
            "api",
            core.start(
                shlex.split(f"storage-gateway api --host {core.HOST} --port {api_port}"), work / "api.log", env=env
            ),
            f"http://{core.HOST}:{api_port}",
            {},
            "/healthz",
            work / "api.log",
        )
        try:
            for server in (edge, api):
                core.wait_until_up(server)
            issue = post_script(work, "single", {"path": "/300/call.mp3"}, bearer)
            # Same response as the unsigned link (no inline, which may probe for a rendition): only the check differs.
            signed_request = {"path": "/300/call.mp3", "expires_in": 3600}
            batch = post_script(work, "batch", {"links": [{"path": "/300/call.mp3"}] * BATCH}, bearer)
            unsigned_url = json.loads(_post(api.base_url, {"path": "/300/call.mp3"}, bearer))["record_url"]
            signed_url = json.loads(_post(api.base_url, signed_request, bearer))["record_url"]
            assert "sig=" in signed_url and "sig=" not in unsigned_url

            runs: dict[str, list[core.WrkResult]] = {"unsigned": [], "signed": []}
            for _ in range(2):
                for kind, url in (("unsigned", unsigned_url), ("signed", signed_url)):
                    runs[kind].append(wrk(url, args.duration, args.connections))
            single = wrk(f"{api.base_url}/v1/links", args.duration, 8, issue)
            batched = wrk(f"{api.base_url}/v1/links/batch", args.duration, 2, batch)
        finally:
            core.stop(edge.process)
            core.stop(api.process)

    failed = [r for rs in runs.values() for r in rs if not r.ok] + [r for r in (single, batched) if not r.ok]
    rate = {kind: sum(r.requests_per_sec for r in rs) / len(rs) for kind, rs in runs.items()}
    cost = 1 - rate["signed"] / rate["unsigned"]
    report = {
        "edge_unsigned_rps": rate["unsigned"],
        "edge_signed_rps": rate["signed"],
        "signature_cost": cost,
        "api_single_links_per_s": single.requests_per_sec,
        "api_batch_links_per_s": batched.requests_per_sec * BATCH,
        "api_single_p99_s": single.latency_percentiles_s.get("p99"),
    }
    print(f"edge, 64 KiB via unsigned link : {rate['unsigned']:>10,.0f} req/s")
    print(f"edge, 64 KiB via signed link   : {rate['signed']:>10,.0f} req/s")
    print(f"signature check costs          : {cost:>10.1%}   (target < 5%)  {'PASS' if cost < 0.05 else 'BELOW'}")
    print(f"API, single POST /v1/links     : {single.requests_per_sec:>10,.0f} links/s")
    print(f"API, batch of {BATCH}             : {batched.requests_per_sec * BATCH:>10,.0f} links/s")
    for result in failed:
        print(f"FAILED: {' '.join(result.command)}: {'; '.join(result.problems)}", file=sys.stderr)
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


def _post(base_url: str, body: dict, bearer: str) -> str:
    request = core.urllib.request.Request(
        f"{base_url}/v1/links",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"},
    )
    with core.HTTP.open(request, timeout=10) as response:
        return response.read().decode()


if __name__ == "__main__":
    sys.exit(main())
