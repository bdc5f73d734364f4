"""Roles on separate nodes: a local Ray cluster of a head and two worker nodes started with the custom
resources of moon_ray/infrastructure/resources.py (one "trainer" node, one "rollout" node), a short joint
run submitted with `moon-ray submit train … ray.use_custom_resources=true`, its pool looked at and resized with
`moon-ray rollout status|scale` while it runs (bad requests refused, the job left as it was); the job's own
records (summary.json, its logs) say where each role ran.

    .venv/bin/python -m pytest -q tests/test_roles_on_nodes.py
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from moon_ray.cli import main
from moon_ray.infrastructure.resources import DATA, ROLLOUT, TRAINER
from moon_ray.jobs import connect
from tests.ray_head import BIN, local_head
from tests.train.tiny_lm import write_tiny_lm

# Ray's job client opens its log websocket with ssl=None, which aiohttp deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")

TRAINER_NODE = (2, {TRAINER: 2})  # (logical CPUs, custom resources): two trainer slots
ROLLOUT_NODE = (2, {ROLLOUT: 2})  # two rollout actor slots


def wait_status(client, job_id: str, wanted: set[str], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id).value
        if status in wanted:
            return status
        time.sleep(0.5)
    pytest.fail(f"job {job_id} not {wanted} after {timeout} s:\n{client.get_job_logs(job_id)[-3000:]}")


@pytest.fixture(scope="module")
def cluster():
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    with local_head(path=path, cpus=1, resources={DATA: 1}, workers=(TRAINER_NODE, ROLLOUT_NODE)) as started:
        yield started


def joint_overrides(tiny, catalog, out, steps: int) -> list[str]:
    return [f"model.lm.path={tiny}", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
            "model.matryoshka=[16,32]", "model.lm.embed_layers=2", "train.batch_size=4", "train.warmup_steps=0",
            f"data.output_dir={catalog}", f"train.output_dir={out}", f"train.steps={steps}", "train.log_every=1",
            "train.checkpoint_every=100", "train.num_workers=2", "train.cpus_per_worker=0.5", "train.eval_every=0",
            "rollout.enabled=true", "rollout.engine=torch", "rollout.group_size=2", "rollout.max_tokens=4",
            "rollout.num_workers=1", "rollout.cpus_per_worker=0.5", "rollout.threads=1", "ray.progress=false",
            "serve.index_after_export=false", "ray.use_custom_resources=true"]


def test_trainers_and_rollout_actors_run_on_their_nodes_and_the_pool_scales(cluster, real_slice, tmp_path,
                                                                           monkeypatch, capsys):
    for key in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_path))

    def moon_ray(*args: str) -> tuple[int, str, str]:
        at = 2 if args[0] == "rollout" else 1  # right after the (sub)command
        code = main([*args[:at], "--address", cluster.address, *args[at:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=2.0)
    out = tmp_path / "run"
    code, stdout, stderr = moon_ray("submit", "train", *joint_overrides(tiny, real_slice, out, steps=40))
    assert code == 0, stdout + stderr
    job = re.search(r"submitted job (raysubmit_\w+)", stdout).group(1)
    client, _, _ = connect(cluster.address)
    idle = client.submit_job(entrypoint="python -c 'import time; time.sleep(1800)'", submission_id="raysubmit_nopool")
    try:
        wait_status(client, job, {"RUNNING"})
        deadline = time.monotonic() + 300
        while "moon-ray rollout status" not in client.get_job_logs(job) and time.monotonic() < deadline:
            assert client.get_job_status(job).value == "RUNNING", client.get_job_logs(job)[-3000:]
            time.sleep(1)
        code, stdout, stderr = moon_ray("rollout", "status", job)
        assert code == 0 and f"job {job}: 1 torch actors (at most 2 on this cluster" in stdout, stdout + stderr
        # the rollout node holds two actor slots: 0 and 3 are refused, naming the limit; 2 are placed there
        for bad, message in (("0", "at least 1 actor, asked for 0"), ("3", "the cluster can place at most 2")):
            code, stdout, stderr = moon_ray("rollout", "scale", bad, job)
            assert code in (1, 2) and message in stderr and "Traceback" not in stderr, stdout + stderr
        code, stdout, stderr = moon_ray("rollout", "scale", "2", job)
        assert code == 0 and "from 1 to 2 actors" in stdout and ": 2 torch actors" in stdout, stdout + stderr
        code, stdout, stderr = moon_ray("rollout", "status")  # the only pool on the cluster
        assert code == 0 and f"job {job}: 2 torch actors" in stdout, stdout + stderr
        code, _, stderr = moon_ray("rollout", "status", idle)
        assert code == 1 and f"no rollout pool for job '{idle}'" in stderr, stderr
        code, _, stderr = moon_ray("rollout", "status", "raysubmit_nosuchjob")
        assert code == 2 and "no job 'raysubmit_nosuchjob'" in stderr, stderr
        status = wait_status(client, job, {"SUCCEEDED", "FAILED", "STOPPED"}, timeout=900)
        logs = client.get_job_logs(job)
        assert status == "SUCCEEDED", logs[-4000:]
    finally:
        client.stop_job(idle)
        if client.get_job_status(job).value == "RUNNING":
            client.stop_job(job)
    code, _, stderr = moon_ray("rollout", "status", job)
    assert code == 2 and f"job {job} is SUCCEEDED" in stderr
    assert not [j for j in client.list_jobs() if (j.metadata or {}).get("moon_ray_control")]  # deleted
    assert "[rollout pool] scale: before=1, workers=2" in logs and "placement: trainers on" in logs

    summary = json.loads((out / "summary.json").read_text())
    assert [h["step"] for h in summary["history"]] == list(range(1, 41))
    placement = summary["placement"]
    nodes = placement["nodes"]
    assert len(nodes) == 3
    trainer_nodes = set(placement["trainers"].values())
    rollout_nodes = set(placement["rollout_nodes_ever"]) | set(placement["rollout_actors"])
    assert sorted(placement["trainers"]) == ["0", "1"] and len(trainer_nodes) == 1
    assert len(placement["rollout_actors"]) == 2 and len(rollout_nodes) == 1  # the scaled-up actor too
    (trainer_node,), (rollout_node,) = trainer_nodes, rollout_nodes
    assert nodes[trainer_node]["resources"] == {TRAINER: 2.0} and not nodes[trainer_node]["head"]
    assert nodes[rollout_node]["resources"] == {ROLLOUT: 2.0} and not nodes[rollout_node]["head"]
    assert any(n["head"] and n["resources"] == {DATA: 1.0} for n in nodes.values())
