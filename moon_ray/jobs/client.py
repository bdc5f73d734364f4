"""The job server: its address and token, a connected client, Ray's errors as JobsError, waiting and the
final report of a job.

Address: --address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else http://127.0.0.1:8265.

Token authentication (Ray >= 2.52; `ray start` turns it on with RAY_AUTH_MODE=token or when a token
exists): the job server wants `Authorization: Bearer <token>`, which Ray's client sends only under
RAY_AUTH_MODE=token. moon-ray finds the token as Ray does ($RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH,
~/.ray/auth_token) and sends it unless RAY_AUTH_MODE=disabled. `ray get-auth-token` on a head prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.jobs.errors import JobsError, JobsTimeout
from moon_ray.jobs.interpreter import diagnose

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
QUIET_LOGGERS = ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir")


# ---------------------------------------------------------------------------- address and token
def resolve_address(address: str | None = None, environ: Any = os.environ) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else the local dashboard."""
    for value in (address, environ.get("RAY_API_SERVER_ADDRESS"), environ.get("RAY_ADDRESS")):
        if value:
            return value.rstrip("/")
    return DEFAULT_ADDRESS


def find_token(environ: Any = os.environ, home: Path | None = None) -> tuple[str | None, str]:
    """(token, where it came from), looked up as Ray does; (None, why) without one or with auth disabled."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, "none sent (RAY_AUTH_MODE=disabled)"
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({e.strerror})") from None
        if not token:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return token, f"$RAY_AUTH_TOKEN_PATH ({path})"
    default = (home or Path.home()) / ".ray" / "auth_token"
    token = default.read_text().strip() if default.is_file() else ""
    if token:
        return token, str(default)
    return None, "none found ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)"


@contextlib.contextmanager
def quiet_ray_logs() -> Iterator[None]:
    """Keep errors only from Ray's client, which logs each packaging step (call after the import)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def translate_errors(address: str, token_source: str) -> Iterator[None]:
    """The client's exceptions (unreachable server, refused token, the server's answer) as JobsError."""
    import requests
    from ray.exceptions import AuthenticationError, RpcError

    try:
        yield
    except AuthenticationError as e:
        reason = str(e).strip().splitlines()[0]
        raise JobsError(
            f"{address} refused the request: {reason}\n  token: {token_source}\n  fix: on the head node "
            "`ray get-auth-token` prints the cluster's token; set RAY_AUTH_TOKEN to it, or write it to "
            "~/.ray/auth_token (or to the file named by RAY_AUTH_TOKEN_PATH)") from None
    except (ConnectionError, requests.exceptions.RequestException, RpcError) as e:
        raise JobsError(
            f"cannot reach the Ray job server at {address} ({e})\n  is the cluster up? `ray start --head` "
            "serves it on port 8265; pass --address http://HEAD:8265 or set RAY_ADDRESS") from None
    except (RuntimeError, ValueError) as e:  # the server's answer (unknown job id, ...) or a bad runtime env
        raise JobsError(str(e).strip()) from None


def connect(address: str | None = None):
    """(JobSubmissionClient, address, token source) for --address / $RAY_ADDRESS, with the token if any."""
    address = resolve_address(address)
    token, source = find_token()
    if token and not address.startswith(("http://", "https://")):
        # A GCS or ray:// address is resolved through Ray's own (C++) client, which reads the mode here.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:  # the client prefers those variables to its address argument; --address must win
        with quiet_ray_logs(), translate_errors(address, source):
            client = JobSubmissionClient(address, headers=headers)
    finally:
        os.environ.update(saved)
    return client, address, source


# ------------------------------------------------------------------------------------------ waiting
async def _stream_logs(client, job_id: str, out, timeout: float | None) -> None:
    async with asyncio.timeout(timeout):
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()


def wait_for_job(client, job_id: str, *, follow: bool = True, timeout: float | None = None,
                 poll_s: float = 1.0, out=None) -> str:
    """Block until the job is SUCCEEDED, FAILED or STOPPED (returned); stream its logs to `out` if follow."""
    import aiohttp

    watch = Stopwatch()
    if follow:
        try:
            asyncio.run(_stream_logs(client, job_id, out or sys.stdout, timeout))
        except TimeoutError:
            raise JobsTimeout(f"job {job_id} still running after {timeout:g} s; it keeps running") from None
        except (RuntimeError, OSError, aiohttp.ClientError) as e:
            print(f"[moon-ray] log stream lost ({e}); waiting without logs", file=sys.stderr)
    while True:
        status = client.get_job_status(job_id).value
        if status in TERMINAL:
            return status
        if timeout is not None and watch.elapsed() > timeout:
            raise JobsTimeout(f"job {job_id} still {status} after {timeout:g} s; it keeps running")
        time.sleep(poll_s)


def report(client, job_id: str, *, follow: bool, timeout: float | None) -> int:
    """Wait for the job, then one line: its end state, time and reason. A failure that moon-ray recognises
    (the job's Python lacks a dependency, has no `python`) is told as its one line and the fix, because the
    traceback under it says nothing about the cause: the cluster's Python."""
    watch = Stopwatch()
    status = wait_for_job(client, job_id, follow=follow, timeout=timeout)
    info = client.get_job_info(job_id)
    problem = None
    if status == "FAILED":
        logs = client.get_job_logs(job_id)
        problem = diagnose(logs, info.entrypoint)
        if not follow and problem is None:
            tail = logs.splitlines()[-40:]
            print("\n".join(["--- last lines of the job's logs ---", *tail]), file=sys.stderr)
    # Ray's message for a failed entrypoint goes on with the logs' tail, shown above already: its first line
    reason = problem[0] if problem else (info.message or "").strip().split("\n", 1)[0]
    reason = reason.split(", last available logs", 1)[0]
    why = f": {reason}" if status != "SUCCEEDED" and reason else ""
    print(f"job {job_id} {status} after {watch.elapsed():.1f} s{why}", flush=True)
    if problem:
        print(problem[1], file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1
