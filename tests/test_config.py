import dataclasses

import pytest

from moon_ray.config import Config, ConfigError, build, describe, load_config, to_dict, to_overrides


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
