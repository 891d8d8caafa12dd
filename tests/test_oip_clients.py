"""Real Ray Serve driven through /v2 by two clients nobody here wrote: tritonclient's HTTP client
(binary tensor data on, as it asks by default) and KServe's Python REST client (v2 protocol).
Each one's predictions equal /v1/classify's for the same texts and budget. One Serve per module."""

import asyncio

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.serve

TEXTS = ["good fun movie", "the plot was bad and dull", "love the actor", "hate it"]
BUDGETS = [{"mode": "fixed", "max_flops_ratio": 0.5}, {"mode": "dense"}]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.conftest import start_tiny_serve, stop_serve

    info = start_tiny_serve(tmp_path_factory.mktemp("oip-serve"), replicas=1, max_batch_size=8)
    try:
        yield info["base"]
    finally:
        stop_serve()


def _v1(base: str, budget: dict) -> tuple[list[str], np.ndarray]:
    r = requests.post(f"{base}/v1/classify", json={"texts": TEXTS, "budget": budget}, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    return [x["label"] for x in results], np.array(
        [[x["probabilities"][k] for k in ("neg", "pos")] for x in results]
    )


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


@pytest.mark.parametrize("budget", BUDGETS, ids=["fixed-f50", "dense"])
def test_tritonclient_binary_outputs_equal_v1(base, budget):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url=base.removeprefix("http://"), connection_timeout=60, network_timeout=60
    )
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_config("tiny")["labels"] == ["neg", "pos"]
    labels, probs = _v1(base, budget)
    for binary_in in (True, False):
        inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary_data=binary_in)
        res = client.infer("tiny", [inp], parameters=budget)  # no outputs named: binary_data_output
        raw = res.get_response()
        assert all("binary_data_size" in o["parameters"] for o in raw["outputs"]), raw
        assert [_text(x) for x in res.as_numpy("label")] == labels
        np.testing.assert_allclose(res.as_numpy("probabilities"), probs, rtol=1e-5)
        assert res.as_numpy("escalated").dtype == np.bool_
    top = client.infer(
        "tiny",
        [inp],
        parameters=budget,
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=1)],
    )
    assert [_text(x[0]).split(":")[2] for x in top.as_numpy("probabilities")] == labels
    with pytest.raises(httpclient.InferenceServerException) as e:
        client.infer("tiny", [inp], parameters={"colour": "red"})
    assert e.value.status() == "400" and e.value.message().startswith("unknown parameter 'colour'")


@pytest.mark.parametrize("budget", BUDGETS, ids=["fixed-f50", "dense"])
def test_kserve_rest_client_equals_v1(base, budget):
    import httpx
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    labels, probs = _v1(base, budget)

    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            assert await client.is_server_ready(base) and await client.is_model_ready(base, "tiny")
            answers = []
            for binary in (False, True):
                inp = InferInput("text", [len(TEXTS)], "BYTES")
                inp.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary)
                outputs = [
                    RequestedOutput("label", {"binary_data": binary}),
                    RequestedOutput("probabilities", {"binary_data": binary}),
                ]
                req = InferRequest(
                    model_name="tiny", infer_inputs=[inp], parameters=budget, request_outputs=outputs
                )
                res = await client.infer(base, req, model_name="tiny")
                answers.append({o.name: o.as_numpy() for o in res.outputs})
            bad = InferRequest(model_name="tiny", infer_inputs=[inp], parameters={"max_flops_ratio": 3})
            with pytest.raises(httpx.HTTPStatusError) as e:
                await client.infer(base, bad, model_name="tiny")
            return answers, e.value
        finally:
            await client.close()

    answers, err = asyncio.run(go())
    for out in answers:
        assert [_text(x) for x in out["label"]] == labels
        np.testing.assert_allclose(
            np.asarray(out["probabilities"], dtype=np.float32).reshape(len(TEXTS), 2), probs, rtol=1e-5
        )
    assert err.response.status_code == 400 and set(err.response.json()) == {"error"}
    assert "max_flops_ratio" in err.response.json()["error"]


def test_v2_errors_through_rays_proxy_have_the_spec_shape(base):
    for method, path, status in [
        ("get", "/v2/models/other", 404),
        ("get", "/v2/models/tiny/versions/9", 404),
        ("post", "/v2/models/tiny/infer", 400),
        ("get", "/v2/nothing", 404),
    ]:
        r = getattr(requests, method)(
            f"{base}{path}", timeout=30, **({"json": {}} if method == "post" else {})
        )
        assert (
            r.status_code == status and set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
        ), r.text
