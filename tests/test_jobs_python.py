"""Which Python runs a submitted job (issue 18): `.venv/bin/ray start --head` without activating the venv
leaves the system Python as the job's `python`. `moon-ray submit` checks the cluster's Python first, runs
the job with this venv when the cluster is on this machine, refuses with the fix otherwise, and tells a job
that failed on an import as one line and the fix.

The probe and the decision without a cluster; then a local head whose PATH has a bare Python (a venv
without packages) as `python` and not this venv, as after `.venv/bin/ray start --head`.

    .venv/bin/python -m pytest -q tests/test_jobs_python.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moon_ray.cli import main
from moon_ray.jobs import JobsError, choose_python, diagnose
from moon_ray.jobs.interpreter import Found, parse_probe, probe_command, problems, requirements, venv_hint
from tests.conftest import ROOT, real_overrides
from tests.ray_head import local_head

pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
LOCAL = sys.executable


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The bin directory of a venv with no packages: a Python that lacks every moon-ray requirement."""
    where = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    return where / "bin"


# ------------------------------------------------------------------------------ without a cluster
def test_probe_reports_each_python_and_the_nonce(tmp_path, bare):
    nonce = tmp_path / "nonce"
    nonce.write_text("n0nce")
    needs = requirements()
    assert {"ray", "torch", "pyarrow", "pyyaml"} <= {r.name.lower() for r in needs[1]}
    missing = str(tmp_path / "no-python")
    command = probe_command(["python", LOCAL, missing], [r.name for r in needs[1]], str(nonce))
    done = subprocess.run(["sh", "-c", command], env={"PATH": f"{bare}:/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen, found = parse_probe(done.stdout)
    assert seen == "n0nce" and list(found) == ["python", LOCAL, missing]
    assert found["python"].executable == str(bare / "python")
    bad = problems(found["python"], needs, None)
    assert "lacks ray" in bad and "lacks torch" in bad
    assert problems(found[LOCAL], needs, None) == []  # this venv has everything moon-ray requires
    assert found[LOCAL].executable == LOCAL
    assert found[missing].executable is None and "not found" in problems(found[missing], needs, None)[0]


def test_problems_name_versions():
    needs = requirements()
    ray = next(r for r in needs[1] if r.name == "ray")
    have = {r.name: "999.0" for r in needs[1]}  # present, but mostly outside the pins
    old = Found("python", "/usr/bin/python3", "3.9.2", {**have, "ray": "2.9.0"})
    bad = problems(old, needs, cluster_ray="2.60.0")
    assert "is Python 3.9.2, not >=3.11" in bad
    assert f"has ray 2.9.0, not {ray.specifier}" in bad
    assert "has ray 2.9.0 while the cluster runs ray 2.60.0" in bad


def _found() -> dict[str, Found]:
    return {"python": Found("python", "/usr/bin/python3", "3.10.12"), LOCAL: Found(LOCAL, LOCAL, "3.11.7")}


def _issues(python_issues: list[str], local_issues: list[str] = ()):
    return lambda f: python_issues if f.label == "python" else list(local_issues)


def test_a_cluster_python_that_has_everything_is_kept():
    assert choose_python(_found(), _issues([]), requested=None, local=LOCAL, same_machine=False) == ("python", None)


def test_a_cluster_on_this_machine_runs_the_job_with_this_venv():
    python, note = choose_python(_found(), _issues(["lacks torch", "lacks ray"]), requested=None, local=LOCAL,
                                 same_machine=True)
    assert python == LOCAL
    assert "/usr/bin/python3 (Python 3.10.12), lacks torch, ray" in note and LOCAL in note


def test_a_remote_cluster_is_refused_with_its_python_and_the_fix():
    with pytest.raises(JobsError) as e:  # the probe did not see this machine's files: never point at our path
        choose_python(_found(), _issues(["lacks torch"]), requested=None, local=LOCAL, same_machine=False)
    text = str(e.value)
    assert text.startswith("the cluster's `python` cannot run moon-ray: /usr/bin/python3 (Python 3.10.12) "
                           "lacks torch")
    assert "the head node's `ray start`" in text and "install moon-ray's requirements" in text
    assert "--python /path/to/python" in text


def test_this_venv_is_not_used_when_it_lacks_something_or_python_was_named():
    with pytest.raises(JobsError, match="lacks torch"):
        choose_python(_found(), _issues(["lacks torch"], ["lacks faiss"]), requested=None, local=LOCAL,
                      same_machine=True)
    found = {"/opt/py": Found("/opt/py", "/opt/py", "3.11.1"), LOCAL: Found(LOCAL, LOCAL, "3.11.7")}
    with pytest.raises(JobsError) as e:
        choose_python(found, lambda f: ["lacks torch"] if f.label == "/opt/py" else [], requested="/opt/py",
                      local=LOCAL, same_machine=True)
    assert str(e.value).startswith("--python /opt/py cannot run moon-ray")
    assert f"source {venv_hint()}/bin/activate && ray start --head" in str(e.value)


def test_diagnose_names_the_import_error_or_the_missing_python():
    logs = ("Running entrypoint for job x: python pipelines/preprocess.py\nTraceback (most recent call last):\n"
            '  File "pipelines/preprocess.py", line 9, in <module>\n'
            "ModuleNotFoundError: No module named 'pyarrow'\n")
    line, hint = diagnose(logs, "python pipelines/preprocess.py data.limit=5")
    assert line == "ModuleNotFoundError: No module named 'pyarrow'"
    assert "ray start --head" in hint and "`python`" in hint
    line, _ = diagnose("/bin/sh: 1: python: not found\n", "python pipelines/preprocess.py")
    assert line == "`python` was not found on the cluster's PATH"
    assert diagnose("error: unrecognized arguments: --no-such-flag\n", "python pipelines/preprocess.py") is None


# ---------------------------------------------------- a local head whose `python` is not the venv's
@pytest.fixture(scope="module")
def bare_head(bare):
    """`ray start --head` by this venv's `ray`, the venv not on PATH: `python` is the bare one."""
    with local_head(path=f"{bare}{os.pathsep}/usr/bin{os.pathsep}/bin") as head:
        yield head


@pytest.fixture
def user(bare_head, monkeypatch, capsys):
    """`moon-ray COMMAND --address HEAD ARGS` in this process, with the head's token file."""
    for key in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(bare_head.token_path))

    def run(*args: str) -> tuple[int, str, str]:
        at = 2 if args[0] == "jobs" else 1
        code = main([*args[:at], "--address", bare_head.address, *args[at:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_a_named_python_without_the_requirements_is_refused_before_submitting(bare, user):
    code, out, err = user("submit", "preprocess", "--python", "python", "data.limit=5")
    assert code == 2 and "submitted job" not in out, out + err
    assert f"--python python cannot run moon-ray: {bare / 'python'} (Python " in err
    assert re.search(r"lacks [\w-]+, [\w-]+", err) and "ray start --head" in err and "Traceback" not in err
    code, out, _ = user("jobs", "list")
    assert code == 0 and "moon-ray-probe" not in out  # the probe job is deleted


def test_a_cluster_that_does_not_see_this_machine_is_refused(bare, user, monkeypatch):
    """As for a remote cluster: the probe cannot read the file written here (it reads another path), so
    this venv's path is not offered to it; the refusal names the cluster's Python and the remote fix."""
    from moon_ray.jobs import interpreter

    real = interpreter.probe_command
    monkeypatch.setattr(interpreter, "probe_command", lambda c, d, nonce: real(c, d, nonce + ".not-here"))
    code, out, err = user("submit", "preprocess", "data.limit=5")
    assert code == 2 and "submitted job" not in out, out + err
    assert f"the cluster's `python` cannot run moon-ray: {bare / 'python'} (Python " in err
    assert "the head node's `ray start`" in err and "install moon-ray's requirements" in err
    assert "--python /path/to/python" in err and LOCAL not in err


def test_a_local_cluster_runs_the_job_with_this_venv(bare, bare_head, shared_data):
    """The issue's case, as a user runs it: the job now SUCCEEDS, with a note on which Python runs it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environ["RAY_AUTH_TOKEN_PATH"] = str(bare_head.token_path)
    out = bare_head.base / "catalog"
    cmd = [LOCAL, "-m", "moon_ray.cli", "submit", "preprocess", "--wait", "--timeout", "150", "--address",
           bare_head.address, *real_overrides(shared_data, out, 5)]
    done = subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"the cluster's `python`, {bare / 'python'}" in done.stderr and LOCAL in done.stderr
    assert f"entrypoint: {LOCAL} pipelines/preprocess.py" in done.stdout
    assert re.search(r"job raysubmit_\w+ SUCCEEDED", done.stdout) and (out / "stats.json").exists()


def test_an_import_failure_is_one_line_and_the_fix(user):
    code, out, err = user("submit", "preprocess", "--no-check", "--wait", "--no-follow", "--timeout", "120",
                          "data.limit=5")
    assert code == 1, out + err
    assert re.search(r"job raysubmit_\w+ FAILED after [\d.]+ s: ModuleNotFoundError: No module named '\w+'$",
                     out.strip()), out
    assert "ray start --head" in err and "Traceback" not in out + err
    job_id = re.search(r"submitted job (raysubmit_\w+)", out).group(1)
    code, out, err = user("jobs", "status", job_id)
    assert code == 0 and re.search(r"message: +ModuleNotFoundError: No module named '\w+'\n", out), out
    assert "ray start --head" in err
