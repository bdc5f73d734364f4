"""/v1/embeddings and /v1/models through the real `openai` client, against the running deployment.

The served vectors are checked against numbers derived independently: the tiny MOON model loaded in
this process, and, for the frozen baseline, its block structure ([i; 0] for an image, [0; t] for a
text, [i; t]/√2 for both — moon_ray/models/baselines.py).
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from tests.serve.conftest import data_url

IMAGE_DIM = 1280  # the frozen baseline's image block


@pytest.fixture(scope="module")
def frozen_client(served):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tiny_client(served):
    return openai.OpenAI(base_url=f"{served.tiny_url}/v1", api_key=served.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tiny_local(served):
    from moon_ray.models.encoder import get_encoder

    return get_encoder(str(served.export))


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_models_list_and_retrieve(frozen_client, tiny_client):
    assert [m.id for m in frozen_client.models.list().data] == ["frozen"]
    card = tiny_client.models.retrieve("tiny")
    assert card.id == "tiny" and card.model_extra["dimensions"] == [16, 32] and card.model_extra["reasoning"]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        tiny_client.models.retrieve("gpt-4")


def test_text_embeddings_equal_the_model_in_process(tiny_client, tiny_local):
    texts = ["Men Navy Blue Shirts", "red floral dress for women"]
    resp = tiny_client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    assert resp.object == "list" and resp.model == "tiny" and [d.index for d in resp.data] == [0, 1]
    np.testing.assert_allclose(vectors(resp), tiny_local.encode([None, None], texts), atol=1e-5)
    tokens = sum(len(tiny_local.model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == tokens


def test_dimensions_truncate_and_renormalise(tiny_client):
    full = vectors(tiny_client.embeddings.create(model="tiny", input="white sneakers", encoding_format="float"))[0]
    short = vectors(tiny_client.embeddings.create(model="tiny", input="white sneakers", dimensions=16,
                                                  encoding_format="float"))[0]
    assert short.shape == (16,)
    np.testing.assert_allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="trained at 16, 32"):
        tiny_client.embeddings.create(model="tiny", input="x", dimensions=20)


def test_base64_encoding_is_little_endian_float32(tiny_client):
    floats = vectors(tiny_client.embeddings.create(model="tiny", input=["a", "b c"], encoding_format="float"))
    raw = tiny_client.embeddings.create(model="tiny", input=["a", "b c"], encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    np.testing.assert_array_equal(decoded, floats)
    default = tiny_client.embeddings.create(model="tiny", input=["a", "b c"])  # the client asks base64, decodes
    np.testing.assert_array_equal(vectors(default), floats)


def test_image_text_and_multimodal_inputs_frozen(frozen_client, served):
    from transformers import AutoTokenizer

    from moon_ray.models.weights import minilm_dir

    product = served.products[0]
    image_url = data_url(product["image"])
    raw_b64 = base64.b64encode(product["image"]).decode()
    inputs = [{"image": image_url}, {"text": product["title"]}, {"image": raw_b64, "text": product["title"]}]
    resp = frozen_client.embeddings.create(model="frozen", input=inputs, encoding_format="float")
    image, text, both = vectors(resp)
    assert image.shape == (1664,)
    np.testing.assert_allclose(np.linalg.norm(vectors(resp), axis=1), 1.0, atol=1e-5)
    assert np.all(image[IMAGE_DIM:] == 0) and np.all(text[:IMAGE_DIM] == 0)
    np.testing.assert_allclose(both, (image + text) / np.sqrt(2), atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())  # MiniLM's: the frozen baseline's text tower
    assert resp.usage.prompt_tokens == 2 * len(tokenizer(product["title"], add_special_tokens=False)["input_ids"])


def test_concurrent_requests_are_batched_without_mixing_rows(tiny_client, tiny_local, served):
    import httpx

    texts = [f"product number {i} in colour {c}" for i, c in enumerate(["red", "blue", "green", "black"] * 4)]
    before = httpx.get(f"{served.tiny_url}/healthz", timeout=60).json()["batching"]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda t: vectors(tiny_client.embeddings.create(model="tiny", input=t))[0], texts))
    np.testing.assert_allclose(np.stack(got), tiny_local.encode([None] * len(texts), texts), atol=1e-5)
    after = httpx.get(f"{served.tiny_url}/healthz", timeout=60).json()["batching"]
    assert after["items"] - before["items"] == len(texts)  # every input went through the dynamic batcher
    assert 1 <= after["batches"] - before["batches"] < len(texts)  # ... and some calls held several inputs
    assert after["mean_batch_size"] == round(after["items"] / after["batches"], 2)


def test_a_document_is_the_same_vector_in_evaluation_the_index_and_the_api(served, tiny_client, tiny_index):
    """One product (the first of the index's slice) through the evaluation path (eval/embed.py's Ray Data
    actors), the index-building path (the `moon-ray index` job's artifact) and /v1/embeddings with
    input_type=document: the same trace, the same vector."""
    import pyarrow as pa

    from moon_ray.config import load_config
    from moon_ray.eval.embed import embed_requests_traced
    from moon_ray.eval.index_artifact import read_index_dir

    product = served.products[0]
    request = pa.table({"row": [0], "image": [product["image"]], "text": [product["title"]], "degrade": [None],
                        "product": [True]}, schema=pa.schema([("row", pa.int64()), ("image", pa.binary()),
                                                               ("text", pa.string()), ("degrade", pa.string()),
                                                               ("product", pa.bool_())]))
    cfg = load_config(None, [f"eval.model={served.export}", "eval.num_actors=1", "eval.cpus_per_actor=0.25"])
    evaluated, eval_traces = embed_requests_traced(request, cfg)
    _, indexed, meta = read_index_dir(tiny_index)
    resp = tiny_client.embeddings.create(model="tiny", input=[], encoding_format="float", extra_body={
        "input": [{"image": data_url(product["image"]), "text": product["title"]}], "input_type": "document"})
    served_vec, served_trace = vectors(resp)[0], resp.data[0].model_extra["reasoning"]
    assert meta["id"][0] == product["id"] and eval_traces[0] == meta["reasoning"][0] == served_trace
    np.testing.assert_allclose(evaluated[0], indexed[0], atol=1e-5)
    np.testing.assert_allclose(served_vec, indexed[0], atol=1e-5)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.model_extra["reasoning_tokens"]


def test_a_query_is_embedded_without_a_trace_and_reasoning_on_it_is_a_400(tiny_client, tiny_local):
    text = "Nike Men White Running Shoes"
    resp = tiny_client.embeddings.create(model="tiny", input=text, extra_body={"input_type": "query"})
    assert "reasoning" not in resp.data[0].model_extra  # as training embeds queries: no trace
    np.testing.assert_allclose(vectors(resp), tiny_local.encode([None], [text]), atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="without a reasoning trace") as e:
        tiny_client.embeddings.create(model="tiny", input=text, extra_body={"reasoning": True})
    assert e.value.body["param"] == "reasoning"


@pytest.mark.parametrize("body, param", [
    ({"input_type": "passage"}, "input_type"),
    ({"input_type": "document"}, "input[0].image"),
    ({"input_type": "document", "input": [{"image": "IMAGE"}]}, "input[0].text"),
    ({"input_type": "document", "input": [{"image": "IMAGE", "text": "a"}], "reasoning": False}, "reasoning"),
])
def test_bad_document_requests_are_400s_naming_the_field(tiny_client, served, body, param):
    if "input" in body:
        body = {**body, "input": [{k: data_url(served.products[0]["image"]) if v == "IMAGE" else v
                                   for k, v in item.items()} for item in body["input"]]}
    with pytest.raises(openai.BadRequestError) as e:
        tiny_client.embeddings.create(model="tiny", input="Men Navy Blue Shirts", extra_body=body)
    assert e.value.body["param"] == param


def test_reasoning_on_a_baseline_is_a_clear_400(frozen_client):
    with pytest.raises(openai.BadRequestError, match="no language model") as e:
        frozen_client.embeddings.create(model="frozen", input="x", extra_body={
            "input": [{"image": "aGk=", "text": "x"}], "input_type": "document", "reasoning": True})
    assert e.value.body["param"] == "reasoning"
