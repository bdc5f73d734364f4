"""A local `ray start --head` for the job tests: free ports, 2 CPUs, its own temp dir, token authentication
with its own token, and the PATH the caller chooses (the job's `python` is the first one on it).

    with local_head(path=f"{BIN}:{os.environ['PATH']}") as head:   # head.address, head.token_path
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

BIN = Path(sys.executable).parent  # the venv's bin: `ray`, and the `python` the job must run


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_ready(address: str, token: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    request = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"the job server at {address} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, address: str, token: str) -> None:
    """Stop unfinished jobs (their drivers run in sessions of their own), then SIGKILL the head's process
    group (its own, start_new_session: gcs, raylet, dashboard, workers). A SIGTERM would make `ray start
    --block` drain the node for up to 30 s first; nothing here needs that."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        jobs = urllib.request.Request(f"{address}/api/jobs/", headers=headers)
        with urllib.request.urlopen(jobs, timeout=10) as r:
            running = [j["submission_id"] for j in json.load(r) if j["status"] in ("PENDING", "RUNNING")]
        for job_id in running:
            stop = urllib.request.Request(f"{address}/api/jobs/{job_id}/stop", method="POST", headers=headers)
            urllib.request.urlopen(stop, timeout=10).close()
        time.sleep(3 if running else 0)
    except (urllib.error.URLError, OSError, ValueError):
        pass  # the head is already gone
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _start_worker(gcs: int, index: int, cpus: int, custom: dict[str, float], env: dict, base: Path) -> subprocess.Popen:
    """`ray start --address` of one more node on this machine (its own ports, the head's token)."""
    metrics, agent, agent_grpc, rtenv, node, objects = free_ports(6)
    cmd = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", "--block", f"--num-cpus={cpus}",
           # its own: not /tmp/ray, where another local Ray may live, nor the head's, whose runtime-env files
           # (the job's working_dir) a node sharing them would delete when its own tasks are done with them
           f"--temp-dir={base / f'ray-{index}'}",
           f"--resources={json.dumps(custom)}", f"--metrics-export-port={metrics}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={rtenv}", f"--node-manager-port={node}", f"--object-manager-port={objects}",
           f"--object-store-memory={200 * 1024 * 1024}", "--disable-usage-stats"]
    with open(base / f"worker-{index}.log", "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_nodes(address: str, token: str, count: int, timeout: float, base: Path) -> None:
    request = urllib.request.Request(f"{address}/nodes?view=summary", headers={"Authorization": f"Bearer {token}"})
    deadline, alive = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                summary = json.load(response)["data"]["summary"]
            alive = sum(1 for n in summary if n.get("raylet", {}).get("state") == "ALIVE")
            if alive >= count:
                return
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            pass
        time.sleep(1)
    logs = "\n".join(f"{log.name}: {log.read_text()[-2000:]}" for log in sorted(base.glob("worker-*.log")))
    pytest.fail(f"{alive} of {count} nodes alive after {timeout} s:\n{logs}")


@contextlib.contextmanager
def local_head(path: str, cpus: int = 2, resources: dict[str, float] | None = None,
               workers: tuple[tuple[int, dict[str, float]], ...] = ()) -> Iterator[SimpleNamespace]:
    """`ray start --head` (this venv's `ray`, by its path) with PATH=`path`, `cpus` logical CPUs and the custom
    `resources`, then one `ray start --address` node per (cpus, resources) in `workers`; yields address,
    token, token_path and base (a temp dir removed afterwards)."""
    base = Path(tempfile.mkdtemp(prefix="mrjobs-", dir="/tmp"))  # short: Ray's socket paths are limited
    token = secrets.token_hex(32)
    (base / "token").write_text(token)
    gcs, dash, agent, agent_grpc, metrics, rtenv, client, node, objects = free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(base / "token"))
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={cpus}", f"--temp-dir={base / 'ray'}",
           f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rtenv}",
           f"--ray-client-server-port={client}", f"--node-manager-port={node}",
           f"--object-manager-port={objects}",
           f"--object-store-memory={300 * 1024 * 1024}", "--disable-usage-stats",
           *([f"--resources={json.dumps(resources)}"] if resources else [])]
    log = base / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    nodes: list[subprocess.Popen] = []
    try:
        # a loaded machine can take longer: MOON_RAY_TEST_HEAD_TIMEOUT=300
        timeout = float(os.environ.get("MOON_RAY_TEST_HEAD_TIMEOUT", 120))
        _wait_ready(address, token, proc, log, timeout=timeout)
        nodes = [_start_worker(gcs, i, c, r, env, base) for i, (c, r) in enumerate(workers)]
        if workers:
            _wait_nodes(address, token, 1 + len(workers), timeout, base)
        yield SimpleNamespace(address=address, token=token, token_path=base / "token", base=base)
    finally:
        try:
            _stop(proc, address, token)
        finally:  # the worker nodes go whatever the head did
            for node in nodes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.wait(timeout=30)
            shutil.rmtree(base, ignore_errors=True)
