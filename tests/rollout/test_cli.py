"""`moon-ray rollout status|scale` against a running job on a local token-authenticated head (tests/ray_head.py):
the job (tests/rollout/pool_job.py) holds a named rollout pool and generates until told to stop; the
commands find it by the job's submission id, resize it while it generates, and refuse bad requests with
the job left as it was."""

from __future__ import annotations

import os
import time

import pytest

from moon_ray.cli import main
from moon_ray.jobs import build_runtime_env, connect
from tests.ray_head import BIN, local_head
from tests.train.tiny_lm import write_tiny_lm


@pytest.fixture(scope="module")
def head():
    with local_head(path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") as started:
        yield started


def wait_status(client, job_id: str, wanted: set[str], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id).value
        if status in wanted:
            return status
        time.sleep(0.5)
    pytest.fail(f"job {job_id} not {wanted} after {timeout} s:\n{client.get_job_logs(job_id)[-3000:]}")


def test_status_and_scale_of_a_running_jobs_pool(head, tmp_path, monkeypatch, capsys):
    for key in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(head.token_path))

    def rollout(*args: str) -> tuple[int, str, str]:
        code = main(["rollout", args[0], *args[1:], "--address", head.address])
        out = capsys.readouterr()
        return code, out.out, out.err

    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=20.0)
    stop = tmp_path / "stop"
    client, _, _ = connect(head.address)
    job = client.submit_job(entrypoint=f"python -m tests.rollout.pool_job {tiny} {stop}",
                            runtime_env=build_runtime_env(), submission_id="raysubmit_pooltest")
    idle = client.submit_job(entrypoint="python -c 'import time; time.sleep(1800)'", submission_id="raysubmit_nopool")
    try:
        wait_status(client, job, {"RUNNING"})
        deadline = time.monotonic() + 240
        while "pool up" not in client.get_job_logs(job) and time.monotonic() < deadline:
            time.sleep(0.5)
        code, out, err = rollout("status", job)
        assert code == 0, out + err
        assert f"rollout pool of job {job}: 1 torch actors (at most 8 on this cluster; each CPU 0.25)" in out

        code, out, err = rollout("scale", "2", job)
        assert code == 0 and "from 1 to 2 actors" in out and ": 2 torch actors" in out, out + err
        for bad, message in (("0", "at least 1 actor, asked for 0"), ("9", "the cluster can place at most 8")):
            code, out, err = rollout("scale", bad, job)
            assert code in (1, 2) and message in err and "Traceback" not in err, out + err
        code, out, err = rollout("status")  # the only pool on the cluster
        assert code == 0 and f"job {job}: 2 torch actors" in out, out + err
        code, out, err = rollout("status", idle)
        assert code == 1 and f"no rollout pool for job '{idle}'" in err, out + err
        code, out, err = rollout("status", "raysubmit_nosuchjob")
        assert code == 2 and "no job 'raysubmit_nosuchjob'" in err, out + err

        stop.touch()
        assert wait_status(client, job, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED", client.get_job_logs(job)
        logs = client.get_job_logs(job)
        assert "[rollout pool] scale: before=1, workers=2" in logs and "workers at the end: 2" in logs
        code, out, err = rollout("status", job)
        assert code == 2 and f"job {job} is SUCCEEDED" in err
        assert not [j for j in client.list_jobs() if (j.metadata or {}).get("moon_ray_control")]  # deleted
    finally:
        stop.touch()
        client.stop_job(idle)
