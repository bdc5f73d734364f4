"""The catalog index as an artifact: model identity, the Ray Data job, stored traces, the startup checks.

    .venv/bin/python -m pytest -q tests/serve/test_index.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moon_ray.config import ConfigError
from moon_ray.eval.index_artifact import (
    FILES,
    check_identity,
    default_index_dir,
    model_identity,
    read_index_dir,
)
from tests.serve.conftest import REASONING, write_export


def cfg_for(*overrides: str):
    from moon_ray.serve.app import config_from_args

    return config_from_args({"overrides": list(overrides)})


def test_identity_follows_the_weights_not_the_path(tiny_export, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(tiny_export, tmp_path / "elsewhere" / "export")
    same, original = model_identity(str(copy)), model_identity(str(tiny_export))
    assert same["fingerprint"] == original["fingerprint"] and same["config_hash"] == original["config_hash"]
    assert (same["name"], same["kind"], same["step"]) == ("elsewhere", "export", 1)
    check_identity({"format": 2, "identity": original}, same, "idx", str(copy))  # a copy serves the index
    weights = load_file(copy / "trainable.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, copy / "trainable.safetensors")
    changed = model_identity(str(copy))
    assert changed["fingerprint"] != original["fingerprint"] and changed["config_hash"] == original["config_hash"]
    with pytest.raises(ConfigError, match=r"built by export 'tiny' \(step 1.*serves export 'elsewhere'.*moon-ray "
                                          r"index --model"):
        check_identity({"format": 2, "identity": original}, changed, "idx", str(copy))
    with pytest.raises(ConfigError, match="older format"):
        check_identity({"model": "tiny", "dim": 32}, changed, "idx", str(copy))
    assert model_identity("frozen") == model_identity("frozen") != model_identity("random")


def test_default_index_places():
    cfg = cfg_for("serve.model=frozen", "data.output_dir=/data/catalog")
    assert default_index_dir(cfg) == Path("/data/index-frozen")


def test_job_vectors_equal_the_model_in_process(tiny_index, tiny_export, real_slice):
    from moon_ray.models.encoder import get_encoder
    from tests.serve.conftest import first_products

    manifest, vectors, meta = read_index_dir(tiny_index)
    assert all((tiny_index / f).is_file() for f in FILES)
    assert manifest["identity"] == model_identity(str(tiny_export))
    assert (manifest["count"], manifest["dim"], manifest["faiss"]["kind"]) == (20, 32, "flat")
    identity = model_identity(str(tiny_export))  # it reasons: every product embedded with its greedy trace
    assert manifest["traces"] == {"embedded": True, "stored": 0, "generated": 20,
                                  "policy_versions": [f"generated:{identity['fingerprint'][:12]}"]}
    products = first_products(real_slice, 20)
    assert meta["id"] == [p["id"] for p in products]  # catalog order, whatever order the actors answered in
    local = get_encoder(str(tiny_export)).encode_products([p["image"] for p in products],
                                                          [p["title"] for p in products])
    np.testing.assert_allclose(vectors, local, atol=1e-5)


class LocalEncoder:
    """What the replica's ProcessEncoder offers the fallback build, over an encoder in this process."""

    def __init__(self, encoder):
        self.encoder, self.dim = encoder, encoder.dim

    def embed_products(self, images, titles, traces=None):
        from moon_ray.eval.index_artifact import embed_products

        return embed_products(self.encoder, images, titles, traces)


@pytest.fixture(scope="module")
def reasoning_export(tmp_path_factory) -> Path:
    """A tiny export trained 'jointly' (rollout.enabled): it embeds products with a reasoning trace."""
    return write_export(tmp_path_factory.mktemp("models") / "thinker", *REASONING, lora_noise=0.3)


def test_stored_traces_of_the_policy_are_reused_and_others_generated(ray_local, real_slice, reasoning_export,
                                                                    tmp_path, capsys):
    """Shards with a `reasoning` column (policy version beside it): the job embeds the traces of the model's
    own policy version as they are, generates the rest (none stored, or stored by another policy) with the
    model, says so, and records both in the manifest; the fallback build agrees."""
    import torch

    from moon_ray.eval.index_artifact import policy_version
    from moon_ray.eval.index_job import build_index_dir
    from moon_ray.models.encoder import get_encoder
    from moon_ray.models.reasoning import generate_reasoning
    from moon_ray.serve.search import CatalogIndex

    identity = model_identity(str(reasoning_export))
    version = policy_version(identity)
    table = pq.read_table(real_slice / "products").sort_by("row").slice(0, 6)
    stored = ["red cotton shirt, men", None, "blue denim jeans", "an older policy's trace", None, "black leather shoes"]
    versions = [version, None, version, "0123456789abcdef", None, version]
    table = table.append_column("reasoning", pa.array(stored, pa.string()))
    table = table.append_column("reasoning_version", pa.array(versions, pa.string()))
    (tmp_path / "catalog" / "products").mkdir(parents=True)
    pq.write_table(table, tmp_path / "catalog" / "products" / "part-0.parquet")
    cfg = cfg_for(f"data.output_dir={tmp_path / 'catalog'}", f"serve.model={reasoning_export}",
                  "serve.index_actors=1", "serve.index_cpus_per_actor=0.5", "serve.index_batch_size=4")
    manifest = build_index_dir(cfg, tmp_path / "index")
    assert f"reusing 3 stored traces of policy {version}, generating 3 (the shards' other traces are of " \
           "policy 0123456789abcdef" in capsys.readouterr().out
    assert identity["reasoning"] and manifest["traces"] == {
        "embedded": True, "stored": 3, "generated": 3,
        "policy_versions": [version, f"generated:{identity['fingerprint'][:12]}"]}
    _, vectors, meta = read_index_dir(tmp_path / "index")
    reused = [0, 2, 5]
    assert [meta["reasoning"][i] for i in reused] == [stored[i] for i in reused]
    encoder = get_encoder(str(reasoning_export))
    images, titles = table.column("image").to_pylist(), table.column("title").to_pylist()
    for rows in ([1, 3], [4]):  # the others of each batch of 4, generated by the model itself, kept
        pixels = encoder.model.pixels([images[i] for i in rows])
        made = generate_reasoning(encoder.model, pixels, [titles[i] for i in rows], max_new_tokens=4)
        assert [meta["reasoning"][i] for i in rows] == made
    assert meta["reasoning"][3] != stored[3]
    with torch.no_grad():
        expected = encoder.model(pixels=encoder.model.pixels(images), texts=titles, reasoning=meta["reasoning"],
                                 modality="multimodal", is_query=False).embedding.numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    without = encoder.encode_products(images, titles)  # generates a trace for every product
    assert not np.allclose(vectors[0], without[0], atol=1e-4)  # the stored trace made a difference
    fallback = CatalogIndex.build(cfg, LocalEncoder(encoder), identity)
    np.testing.assert_allclose(fallback.vectors, vectors, atol=1e-5)
    assert fallback.manifest["traces"] == manifest["traces"] and fallback.meta["reasoning"] == meta["reasoning"]


def test_startup_checks_find_refuse_or_fall_back(tiny_index, tiny_export, real_slice, tmp_path):
    from moon_ray.serve.app import check_sources

    export = shutil.copytree(tiny_export, tmp_path / "run" / "export")  # same weights, another place
    base = [f"data.output_dir={real_slice}", f"serve.model={export}"]
    assert check_sources(cfg_for(*base)).startswith("no prebuilt catalog index at")  # the fallback
    with pytest.raises(FileNotFoundError, match=r"index_build_at_start=false; build it: `moon-ray index"):
        check_sources(cfg_for(*base, "serve.index_build_at_start=false"))
    shutil.copytree(tiny_index, tmp_path / "run" / "export-index")  # the default place: beside the export
    assert check_sources(cfg_for(*base)) == f"loading the catalog index {tmp_path / 'run' / 'export-index'} (20 products)"
    with pytest.raises(ConfigError, match="built by export 'tiny'.*serves baseline 'frozen'"):
        check_sources(cfg_for(f"data.output_dir={real_slice}", f"serve.index_dir={tiny_index}"))
    with pytest.raises(FileNotFoundError, match="holds no catalog index"):
        check_sources(cfg_for(*base, f"serve.index_dir={tmp_path / 'nothing'}"))
    assert check_sources(cfg_for(*base, "serve.index_limit=0")).startswith("search off")


def test_index_command_is_registered():
    from moon_ray.cli import build_parser

    args = build_parser("index").parse_args(["index", "--model", "frozen", "--out", "x", "serve.index_limit=5"])
    assert (args.model, args.out, args.overrides) == ("frozen", "x", ["serve.index_limit=5"])


def test_training_builds_the_index_beside_its_export(ray_local, real_slice, tmp_path):
    """`moon-ray train`'s last step (serve.index_after_export): the export's index at <export>-index, where
    `moon-ray serve --model <export>` looks first; nothing when it is off or search is."""
    from moon_ray.eval.index_artifact import read_manifest
    from moon_ray.train.driver import index_beside_export

    export = write_export(tmp_path / "run")
    base = [f"data.output_dir={real_slice}", "serve.index_limit=10", "serve.index_actors=1",
            "serve.index_cpus_per_actor=0.5", "serve.index_batch_size=5"]
    out = index_beside_export(cfg_for(*base), export)
    assert out == tmp_path / "run" / "export-index"
    manifest = read_manifest(out)
    assert manifest["identity"] == model_identity(str(export)) and manifest["count"] == 10
    assert index_beside_export(cfg_for(*base, "serve.index_after_export=false"), export) is None
    assert index_beside_export(cfg_for(*base, "serve.index_limit=0"), export) is None
