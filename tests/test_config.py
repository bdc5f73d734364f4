import dataclasses
import os
import shlex
import typing
from pathlib import Path

import pytest
import yaml

from moon_ray.cli import DEFAULT_YAML, ROOT, config_yaml, main
from moon_ray.config import (
    Config,
    ConfigError,
    absolute_path,
    build,
    describe,
    flatten,
    load_config,
    to_dict,
    to_overrides,
    to_yaml,
    with_absolute_paths,
)


def test_defaults_and_dotted_overrides():
    cfg = load_config(None, ["data.limit=500", "preprocess.image.size=128", "ray.address=null"])
    assert cfg.data.limit == 500
    assert cfg.preprocess.image.size == 128
    assert cfg.ray.address is None
    assert cfg.data.columns.title == "productDisplayName"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  limit: 10\n  columns:\n    image: path\npreprocess:\n  batch_size: 8\n")
    cfg = load_config(path, ["data.limit=20"])
    assert (cfg.data.limit, cfg.data.columns.image, cfg.preprocess.batch_size) == (20, "path", 8)


def test_default_yaml_equals_dataclass_defaults():
    assert load_config("pipelines/configs/default.yaml") == Config()


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.limt=5", "unknown config key 'data.limt'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("data.columns.colour_x=a", "unknown config key 'data.columns.colour_x'"),
        ("data.limit=many", "data.limit: expected int"),
        ("preprocess.image.resize_mode=zoom", "resize_mode"),
        ("preprocess.split.train=0.9", "sum to 1"),
        ("data.required=[id, sku]", "unknown field 'sku'"),
        ("data.limit", "must look like key.sub=value"),
        ("data=3", "data must be a mapping"),
        ("rollout.sync_backend=mpi", "rollout.sync_backend: expected object_store or nccl"),
        ("rollout.sync_backend=nccl", "needs rollout.sync_mode=merged and rollout.gpus_per_worker > 0"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preprocess:\n  image:\n    sise: 3\n")
    with pytest.raises(ConfigError, match=r"preprocess\.image\.sise.*valid keys under preprocess\.image: size"):
        load_config(path)


def test_roundtrip_through_dict_and_overrides():
    cfg = load_config(None, ["data.limit=7", "data.required=[id, title]", "data.image_pattern={id}.png"])
    assert build(Config, to_dict(cfg)) == cfg
    assert load_config(None, to_overrides(cfg)) == cfg


def test_frozen_and_every_field_has_help():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = None  # type: ignore[misc]
    lines = describe()
    assert any(line.startswith("data.limit = None") for line in lines)
    assert all(line.split("#", 1)[1].strip() for line in lines)


# ------------------------------------------------------------------- the generated default.yaml
def test_committed_default_yaml_is_current():
    """pipelines/configs/default.yaml is what `moon-ray config --write` writes now; else regenerate it."""
    committed = (ROOT / DEFAULT_YAML).read_text()
    assert committed.splitlines()[0] == "# moon-ray config --write  (generated from moon_ray/config/; do not " \
                                        "edit by hand)"
    assert committed == config_yaml(Config(), ["moon-ray", "config", "--write"]), \
        "pipelines/configs/default.yaml is stale: run `moon-ray config --write`"
    assert load_config(ROOT / DEFAULT_YAML) == Config()


def test_generated_yaml_has_every_field_under_its_help():
    lines = (ROOT / DEFAULT_YAML).read_text().splitlines()
    described = [line.split(" = ", 1)[0] for line in describe()]
    assert set(flatten(yaml.safe_load("\n".join(lines)))) == set(described)
    stack: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        stack[depth:] = [line.strip().split(":", 1)[0]]
        key = ".".join(stack)
        section = Config
        for part in stack[:-1]:
            section = typing.get_type_hints(section)[part]
        help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(section)}[stack[-1]]
        comment = []
        for above in reversed(lines[:i]):
            if not above.lstrip().startswith("#") or (len(above) - len(above.lstrip())) // 2 != depth:
                break
            comment.insert(0, above.strip().removeprefix("# "))
        assert " ".join(comment) == help_text, key


def test_write_and_load_back_a_changed_config(tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    overrides = ["data.limit=7", "data.required=[id]", "model.lm.query_prefix='q: '", "serve.index_dir=/x y"]
    assert main(["config", *overrides, "--write", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    command, _, note = out.read_text().splitlines()[0].removeprefix("# ").partition("  (")
    assert shlex.split(command) == ["moon-ray", "config", *overrides, "--write", str(out)]
    assert note.startswith("generated from moon_ray/config/")
    assert load_config(None, overrides).model.lm.query_prefix == "q: "
    assert load_config(out) == load_config(None, overrides)
    assert load_config(None, to_overrides(load_config(out))) == load_config(None, overrides)


def test_write_refuses_what_would_not_regenerate(capsys):
    assert main(["config", "data.limit=3", "--write"]) == 2
    assert "name the file: --write PATH" in capsys.readouterr().err
    assert main(["config", "--write", "data.limit=3"]) == 2  # the override was taken as PATH
    assert "put overrides before --write" in capsys.readouterr().err


def test_to_yaml_of_a_section_round_trips():
    cfg = load_config(None, ["eval.zero_shot=[gender]", "train.init_from=ckpt"])
    assert build(type(cfg.eval), yaml.safe_load(to_yaml(cfg.eval))) == cfg.eval
    assert load_config(None, []) != cfg and build(Config, yaml.safe_load(to_yaml(cfg, ["x"]))) == cfg


# ------------------------------------------------------------------- flattening and paths
def test_flatten_and_overrides():
    tree = {"serve": {"port": 8001, "model": "frozen"}, "data.limit": 5, "empty": {}, "eval": {"zero_shot": ("a",)}}
    assert flatten(tree) == {"serve.port": 8001, "serve.model": "frozen", "data.limit": 5, "eval.zero_shot": ("a",)}
    assert to_overrides(tree) == ["serve.port=8001", "serve.model=frozen", "data.limit=5", "eval.zero_shot=[a]"]
    assert to_overrides({"a": {"b": "7"}}) == ["a.b='7'"]  # a string stays a string when parsed back
    assert to_overrides({"a": {"b": "7"}}, verbatim_strings=True) == ["a.b=7"]  # builder args: override text
    assert flatten(Config())["data.columns.title"] == "productDisplayName"
    assert len(flatten(Config())) == len(describe())


def test_absolute_path(tmp_path, monkeypatch):
    here, repo = tmp_path / "here", tmp_path / "repo"
    (repo / "only-in-repo").mkdir(parents=True)
    (here / "both").mkdir(parents=True)
    (repo / "both").mkdir()
    monkeypatch.chdir(here)
    assert absolute_path("/abs/x") == "/abs/x"
    assert absolute_path("~/x") == os.path.expanduser("~/x")
    assert absolute_path("new/x") == str(here / "new" / "x")
    assert absolute_path("both", search=[repo]) == str(here / "both")  # the current directory first
    assert absolute_path("only-in-repo", search=[repo]) == str(repo / "only-in-repo")
    assert absolute_path("only-in-repo") == str(here / "only-in-repo")  # absent anywhere searched: under cwd
    assert absolute_path("a/../b", cwd=repo) == str(repo / "b")


def test_with_absolute_paths(tmp_path):
    cfg = load_config(None, ["data.output_dir=out", "serve.index_dir=null", "train.init_from=ck"])
    got = with_absolute_paths(cfg, ["data.output_dir", "serve.index_dir", "train.init_from"], cwd=tmp_path)
    assert got.data.output_dir == str(tmp_path / "out") and got.train.init_from == str(tmp_path / "ck")
    assert got.serve.index_dir is None and got.data.catalog == cfg.data.catalog  # unset and unnamed: kept
    assert cfg.data.output_dir == "out" and Path(got.data.output_dir).is_absolute()


def test_a_key_may_be_given_by_its_alias_but_not_twice():
    """rollout.async (a Python keyword, so not a field name) sets rollout.asynchronous."""
    assert load_config(None, ["rollout.async=true"]).rollout.asynchronous
    with pytest.raises(ConfigError, match="given twice"):
        load_config(None, ["rollout.async=true", "rollout.asynchronous=false"])
