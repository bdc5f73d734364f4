"""`moon-ray traces`: greedy traces on a rollout engine, stored in the shards with their policy version,
then reused by the index job and evaluation; the model's own greedy traces are the reference.

    .venv/bin/python -m pytest -q tests/eval/test_traces_job.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moon_ray.config import ConfigError
from tests.serve.conftest import REASONING, write_export


@pytest.fixture(scope="module")
def thinker(tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("models") / "thinker", *REASONING, lora_noise=0.3)


@pytest.fixture
def catalog(real_slice, tmp_path) -> Path:
    """The first 10 products of the real slice in two shards (the job rewrites each)."""
    table = pq.read_table(real_slice / "products").sort_by("row").slice(0, 10)
    (tmp_path / "catalog" / "products").mkdir(parents=True)
    pq.write_table(table.slice(0, 6), tmp_path / "catalog" / "products" / "part-0.parquet")
    pq.write_table(table.slice(6), tmp_path / "catalog" / "products" / "part-1.parquet")
    shutil.copytree(real_slice / "queries", tmp_path / "catalog" / "queries")
    return tmp_path / "catalog"


def config(catalog: Path, model, *extra: str):
    from moon_ray.eval.index_job import index_config

    return index_config(None, [f"data.output_dir={catalog}", "rollout.engine=torch", "rollout.num_workers=1",
                               "rollout.cpus_per_worker=0.5", "serve.index_batch_size=4", *extra], str(model))


def test_traces_are_the_models_greedy_traces_stored_with_the_policy_version(ray_local, thinker, catalog, capsys):
    from moon_ray.eval.index_artifact import model_identity, policy_version
    from moon_ray.eval.index_job import build_index_dir
    from moon_ray.eval.traces_job import run_traces
    from moon_ray.models.encoder import get_encoder
    from moon_ray.models.reasoning import generate_reasoning

    out = run_traces(config(catalog, thinker, "serve.index_limit=8"))
    version = policy_version(model_identity(str(thinker)))
    assert (out["products"], out["written"], out["policy_version"], out["engine"]) == (8, 8, version, "torch")
    table = pq.read_table(catalog / "products").sort_by("row")
    assert table.num_rows == 10 and table.column("reasoning_version").to_pylist() == [version] * 8 + [None] * 2
    traces = table.column("reasoning").to_pylist()
    assert traces[8:] == [None, None] and all(isinstance(t, str) for t in traces[:8])
    encoder = get_encoder(str(thinker))
    images, titles = table.column("image").to_pylist()[:8], table.column("title").to_pylist()[:8]
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):  # the job's batches of 4: the model's own greedy traces
        made = generate_reasoning(encoder.model, encoder.model.pixels([images[i] for i in rows]),
                                  [titles[i] for i in rows], max_new_tokens=4)
        assert [traces[i] for i in rows] == made
    capsys.readouterr()
    manifest = build_index_dir(config(catalog, thinker, "serve.index_actors=1", "serve.index_cpus_per_actor=0.5",
                                      "serve.index_limit=8"), catalog.parent / "index")
    assert f"index: reusing 8 stored traces of policy {version}" in capsys.readouterr().out
    assert (manifest["traces"]["stored"], manifest["traces"]["generated"]) == (8, 0)


def test_eval_reuses_stored_traces_only_at_the_models_version(thinker, catalog, capsys):
    from collections import Counter

    import pyarrow as pa

    from moon_ray.config import load_config
    from moon_ray.eval.data import build_requests, load_split
    from moon_ray.eval.evaluate import with_stored_traces
    from moon_ray.eval.index_artifact import model_identity, policy_version
    from moon_ray.eval.traces_job import write_traces

    table = pq.read_table(catalog / "products").sort_by("row")
    splits = table.column("split").to_pylist()
    split = Counter(splits).most_common(1)[0][0]
    cfg = load_config(None, [f"data.output_dir={catalog}", f"eval.split={split}", f"eval.model={thinker}"])
    version = policy_version(model_identity(str(thinker)))
    rows = [r for r, s in zip(table.column("row").to_pylist(), splits, strict=True) if s == split]
    write_traces(catalog, {rows[0]: "old words"}, "0123456789abcdef")
    write_traces(catalog, {rows[1]: "stored words"}, version)
    data = load_split(cfg)
    requests, parts = build_requests(data, ())
    requests, told = with_stored_traces(requests, parts, data, str(thinker))
    column = requests.column("trace").to_pylist()
    expected = ["stored words" if i == rows[1] else None for i in data.products["row"]]
    assert column[parts["product"]] == expected and set(column[parts["product"].stop:]) == {None}
    assert f"reusing 1 stored traces of policy {version}" in told and "0123456789abcdef" in told
    requests, told = with_stored_traces(requests.drop_columns(["trace"]), parts, data, "frozen")
    assert told == "" and set(requests.column("trace").to_pylist()) == {None}
    assert isinstance(requests, pa.Table)


def test_a_model_that_does_not_reason_has_no_traces(catalog):
    from moon_ray.eval.traces_job import engine_name, run_traces

    with pytest.raises(ConfigError, match="frozen does not reason"):
        run_traces(config(catalog, "frozen"))
    with pytest.raises(ConfigError, match="rollout.engine: expected vllm or torch"):
        engine_name("tgi")
    import importlib.util

    assert engine_name("vllm") == ("vllm" if importlib.util.find_spec("vllm") else "torch")
