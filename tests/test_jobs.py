"""Job submission: pipeline names, path rewriting, token lookup (no cluster); then the CI job-submission
test: `moon-ray submit preprocess --wait` against a local `ray start --head` with token authentication.

    .venv/bin/python -m pytest -q tests/test_jobs.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from moon_ray.cli import main
from moon_ray.config import ConfigError
from moon_ray.jobs import (
    EXCLUDES,
    JobsError,
    available_pipelines,
    build_entrypoint,
    build_runtime_env,
    find_token,
    localise,
    pipeline_script,
    resolve_address,
)
from tests.conftest import ROOT, real_overrides
from tests.ray_head import BIN, free_ports, local_head

# Ray's job client opens its log websocket with ssl=None, which aiohttp deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")


def overrides_of(entrypoint: str) -> dict[str, str]:
    return dict(a.split("=", 1) for a in shlex.split(entrypoint) if "=" in a and not a.startswith("-"))


# ------------------------------------------------------------------------------ without a cluster
def test_pipeline_names_map_to_scripts(tmp_path):
    (tmp_path / "pipelines").mkdir()
    for stem in ("preprocess", "train", "evaluate", "_shared"):
        (tmp_path / "pipelines" / f"{stem}.py").write_text("")
    assert pipeline_script("preprocess", tmp_path) == "pipelines/preprocess.py"
    assert pipeline_script("eval", tmp_path) == "pipelines/evaluate.py"
    assert pipeline_script("pipelines/train.py", tmp_path) == "pipelines/train.py"
    assert available_pipelines(tmp_path) == ["eval", "preprocess", "train"]
    with pytest.raises(JobsError, match=r"unknown pipeline 'serve' \(available: eval, preprocess, train\)"):
        pipeline_script("serve", tmp_path)
    with pytest.raises(JobsError, match="unknown pipeline"):
        pipeline_script("../pipelines/train", tmp_path)


def test_unknown_pipeline_is_a_clean_error(capsys):
    assert main(["submit", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown pipeline 'nope'" in err and "preprocess" in err and "Traceback" not in err


def test_relative_paths_reach_the_job_as_absolute_or_repo_relative(tmp_path):
    cwd = tmp_path / "work"
    (cwd / "data").mkdir(parents=True)
    (cwd / "data" / "styles.csv").write_text("id\n")
    models = os.path.relpath(ROOT / "moon_ray" / "models", cwd)  # ../../…/moon_ray/models
    args = ["data.catalog=data/styles.csv", "data.output_dir=out", "data.limit=50", f"eval.model={models}"]
    got = overrides_of(build_entrypoint("preprocess", None, args, cwd=cwd))
    assert got["data.catalog"] == str(cwd / "data" / "styles.csv")
    assert got["data.output_dir"] == str(cwd / "out")
    assert got["data.limit"] == "50"
    # defaults resolve against the caller's directory, as they would for `moon-ray preprocess` there
    assert got["data.image_dir"] == str((cwd / "../shared/data/fashion-products/images").resolve())
    assert got["eval.output_dir"] == str(cwd / "outputs" / "eval")
    # a path inside the uploaded repository travels with the job: relative to the repository root
    assert got["eval.model"] == "moon_ray/models"
    assert all(os.path.isabs(v) for k, v in got.items() if k.endswith(("_dir", "catalog")))


def test_paths_keep_and_outputs_inside_the_repo(tmp_path):
    kept = build_entrypoint("preprocess", None, ["data.output_dir=out"], cwd=tmp_path, paths="keep")
    assert kept == "python pipelines/preprocess.py data.output_dir=out"
    got = overrides_of(build_entrypoint("preprocess", None, ["data.output_dir=outputs/x"], cwd=ROOT))
    assert got["data.output_dir"] == str(ROOT / "outputs" / "x")  # outputs/ is not uploaded


def test_only_paths_are_rewritten(tmp_path):
    (tmp_path / "w.bin").write_text("")
    assert localise("model.weights_path", "w.bin", ROOT, tmp_path) == str(tmp_path / "w.bin")
    assert localise("model.lm.path", "HuggingFaceTB/SmolLM2-135M", ROOT, tmp_path) is None  # a model id
    assert localise("eval.model", "frozen", ROOT, tmp_path) is None
    assert localise("serve.index_dir", "idx", ROOT, tmp_path) == str(tmp_path / "idx")  # *_dir, even absent
    assert localise("data.catalog", "s3://bucket/styles.csv", ROOT, tmp_path) is None
    assert localise("data.catalog", "/abs/styles.csv", ROOT, tmp_path) is None


def test_config_files_are_shipped_or_inlined(tmp_path):
    inside = build_entrypoint("preprocess", "../pipelines/configs/default.yaml", cwd=ROOT / "tests")
    assert shlex.split(inside)[2:4] == ["--config", "pipelines/configs/default.yaml"]
    (tmp_path / "mine.yaml").write_text("data:\n  limit: 7\n  output_dir: out\n")
    outside = build_entrypoint("preprocess", "mine.yaml", cwd=tmp_path)
    assert "--config" not in outside
    got = overrides_of(outside)
    assert got["data.limit"] == "7" and got["data.output_dir"] == str(tmp_path / "out")


def test_bad_overrides_fail_before_submitting():
    with pytest.raises(ConfigError, match="data.nope"):
        build_entrypoint("preprocess", None, ["data.nope=1"])


def test_submit_options_may_follow_the_pipeline(capsys):
    code = main(["submit", "preprocess", "--dry-run", "data.limit=5", "--env", "A=1", "--paths", "keep",
                 "--", "--flag", "x"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["entrypoint"] == "python pipelines/preprocess.py data.limit=5 --flag x"
    env = plan["runtime_env"]
    assert env["working_dir"] == str(ROOT) and {".venv", "outputs", ".git"} <= set(env["excludes"])
    assert env["env_vars"]["A"] == "1" and env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in env["env_vars"]


def test_runtime_env_requirements_and_env(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("# extra\nrequests==2.32.3  # pinned\n\nrich\n")
    env = build_runtime_env(requirements=str(req), working_dir="local:///home/ray/moon-ray")
    assert env["pip"] == ["requests==2.32.3", "rich"]
    assert env["working_dir"] == "local:///home/ray/moon-ray" and "excludes" not in env
    assert build_runtime_env()["excludes"] == list(EXCLUDES)
    req.write_text("-r other.txt\n")
    with pytest.raises(JobsError, match="names another file"):
        build_runtime_env(requirements=str(req))
    with pytest.raises(JobsError, match="KEY=VALUE"):
        build_runtime_env(env=["NOEQUALS"])


def test_token_lookup_follows_rays_order(tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    (tmp_path / "tok").write_text("file-token")
    assert find_token({}, tmp_path) == ("home-token", str(tmp_path / ".ray" / "auth_token"))
    assert find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}, tmp_path)[0] == "file-token"
    both = {"RAY_AUTH_TOKEN": "env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}
    assert find_token(both, tmp_path)[0] == "env"
    assert find_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "env"}, tmp_path)[0] is None
    assert find_token({}, tmp_path / "nobody")[0] is None
    with pytest.raises(JobsError, match="cannot be read"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, tmp_path)


def test_address_resolution():
    assert resolve_address(None, {}) == "http://127.0.0.1:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "http://h:8265/"}) == "http://h:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "a", "RAY_API_SERVER_ADDRESS": "http://b:1"}) == "http://b:1"
    assert resolve_address("http://c:2", {"RAY_ADDRESS": "a"}) == "http://c:2"


def test_unreachable_address_is_a_clean_error(capsys):
    (port,) = free_ports(1)
    assert main(["jobs", "status", "raysubmit_x", "--address", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray job server" in err and "Traceback" not in err


# --------------------------------------------------------------------- a local head with token auth
@pytest.fixture(scope="module")
def head():
    """A local head whose PATH starts with this venv's bin (tests/ray_head.py), as after `source .venv/bin/activate`."""
    with local_head(path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") as started:
        yield started


def moon_ray(head, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """`python -m moon_ray.cli COMMAND --address HEAD ARGS` as a user runs it: a token file, no mode set."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_path)
    cmd = [sys.executable, "-m", "moon_ray.cli", args[0], "--address", head.address, *args[1:]]
    return subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def as_user(head, monkeypatch, capsys):
    """Runs `moon-ray COMMAND --address HEAD ARGS` in this process (faster), with the same environment."""
    for key in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(head.token_path))

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        at = 2 if args[0] == "jobs" else 1  # before any `--`: right after the (sub)command
        code = main([*args[:at], "--address", head.address, *args[at:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_submit_preprocess_to_a_token_authenticated_head(head, shared_data, as_user):
    out = head.base / "catalog"
    overrides = real_overrides(shared_data, out, 50)
    done = moon_ray(head, "submit", "preprocess", "--wait", "--timeout", "120", *overrides)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = re.search(r"submitted job (raysubmit_\w+)", done.stdout).group(1)
    assert f"job {job_id} SUCCEEDED" in done.stdout
    # the cluster's `python` (this venv, first on its PATH) passed the check: the entrypoint is left as it is
    assert "entrypoint: python pipelines/preprocess.py" in done.stdout and "[moon-ray]" not in done.stderr
    assert "input 50 = ok" in done.stdout  # the job's own output, streamed
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input"] == 50 == stats["ok"] + stats["rejected"]
    shards = sorted((out / "products").glob("*.parquet"))
    assert shards and sum(pq.read_metadata(s).num_rows for s in shards) == stats["ok"]

    code, stdout, _ = as_user("jobs", "status", job_id)
    assert code == 0 and f"{job_id}  SUCCEEDED" in stdout
    code, stdout, _ = as_user("jobs", "logs", job_id)
    assert code == 0 and "input 50 = ok" in stdout
    code, stdout, _ = as_user("jobs", "list")
    assert code == 0 and job_id in stdout and "moon-ray-probe" not in stdout  # the probe job is deleted
    code, stdout, _ = as_user("jobs", "stop", job_id)
    assert code == 0 and "not running (SUCCEEDED)" in stdout
    code, _, stderr = as_user("jobs", "status", job_id, RAY_AUTH_TOKEN="not-the-token")
    assert code == 2 and "refused the request" in stderr and "$RAY_AUTH_TOKEN" in stderr


def test_failed_and_timed_out_jobs_exit_non_zero(head, as_user):
    bad = ["data.limit=5", "--", "--no-such-flag"]  # the script's own argument parser refuses it, at once
    # --timeout: exit 124 at once, the job keeps running (and fails)
    code, out, err = as_user("submit", "preprocess", "--wait", "--timeout", "0.5", *bad)
    assert code == 124 and "keeps running" in err, out + err
    job_id = re.search(r"submitted job (raysubmit_\w+)", out).group(1)
    done = moon_ray(head, "submit", "preprocess", "--wait", "--no-follow", "--timeout", "120", *bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"job raysubmit_\w+ FAILED", done.stdout)
    assert "unrecognized arguments: --no-such-flag" in done.stderr  # the last lines of the job's logs
    code, out, _ = as_user("jobs", "logs", job_id, "--follow", "--timeout", "120")
    assert code == 1 and "--no-such-flag" in out  # followed to its end: FAILED
