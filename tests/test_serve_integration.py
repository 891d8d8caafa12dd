"""Real Ray Serve, started once for this module: v1 and v2 endpoints, and the scraped metrics."""

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import exported_names

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.conftest import start_tiny_serve, stop_serve

    info = start_tiny_serve(tmp_path_factory.mktemp("serve"), replicas=2, max_batch_size=8)
    try:
        yield info["base"], info["metrics"]
    finally:
        stop_serve()


def _scrape(url: str) -> dict:
    fams = {}
    for fam in text_string_to_metric_families(requests.get(url, timeout=10).text):
        fams[fam.name] = fam
    return fams


def _counter_total(fams, name: str, **labels) -> float:
    fam = fams.get(name.removesuffix("_total"))
    if fam is None:
        return 0.0
    return sum(
        s.value
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


SHADOW_COUNTERS = (
    "ray_dihs_shadow_seconds_total",
    "ray_dihs_shadow_idle_seconds_total",
    "ray_dihs_plan_agreement_texts_total",
    "ray_dihs_plan_agreement_disagreements_total",
)


def test_v1_and_v2_and_metrics_add_up_across_replicas(server):
    base, metrics_url = server
    n_v1, n_texts = 0, 0
    for i in range(12):
        texts = ["good fun", "bad awful plot", "love it"][: 1 + i % 3]
        r = requests.post(f"{base}/v1/classify", json={"texts": texts}, timeout=30)
        assert r.status_code == 200, r.text
        assert [x["label"] in ("neg", "pos") for x in r.json()["results"]] == [True] * len(texts)
        n_v1 += 1
        n_texts += len(texts)
    assert requests.post(f"{base}/v1/classify", json={"text": ""}, timeout=30).status_code == 422

    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=base.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("tiny")
    assert client.get_model_metadata("tiny")["inputs"][0]["name"] == "text"
    for binary in (False, True):
        inp = httpclient.InferInput("text", [2], "BYTES")
        inp.set_data_from_numpy(
            np.array([b"good fun", b"the plot was awful"], dtype=object), binary_data=binary
        )
        res = client.infer(
            "tiny",
            [inp],
            outputs=[httpclient.InferRequestedOutput("label", binary_data=False)],
            parameters={"mode": "fixed", "max_flops_ratio": 0.5},
        )
        labels = res.as_numpy("label")
        assert len(labels) == 2 and all(x in (b"neg", b"pos", "neg", "pos") for x in labels)
    n_infer, n_texts = 2, n_texts + 4

    # an explanation through the model deployment agrees with the served answer
    body = {"text": "the plot was bad and dull", "budget": {"mode": "fixed", "max_flops_ratio": 0.5}}
    served = requests.post(f"{base}/v1/classify", json=body, timeout=30).json()["results"][0]
    n_v1, n_texts = n_v1 + 1, n_texts + 1
    explained = requests.post(f"{base}/v1/explain", json=body, timeout=30)
    assert explained.status_code == 200, explained.text
    e = explained.json()
    assert e["label"] == served["label"] and e["heads"]["per_layer"] == served["heads"]["per_layer"]

    # every family but the GPU ones (NVML: GPU machines only), the escalations counter (a Ray
    # counter appears at its first increment, and nothing escalates without load:
    # tests/test_served_cascade.py counts them) and the shadow counters (their first increment waits
    # for idle time at zero pressure: tests/test_shadow.py counts them); the CPU gauge is sampled every 2 s
    by_chance = {"ray_dihs_escalations_total", *SHADOW_COUNTERS}
    expected = {k: v for k, v in exported_names().items() if "gpu" not in k and k not in by_chance}
    wanted = {name.removesuffix("_total") for name in expected}
    deadline = time.time() + 60
    while True:  # Ray's metrics agent exports on an interval: wait for every sample to land
        fams = _scrape(metrics_url)
        ok = _counter_total(fams, "ray_dihs_requests_total", status="ok")
        levels = _counter_total(fams, "ray_dihs_budget_level_total")
        if ((ok, levels) == (n_v1 + n_infer, n_texts) and wanted <= set(fams)) or time.time() > deadline:
            break
        time.sleep(1)
    assert ok == n_v1 + n_infer
    assert _counter_total(fams, "ray_dihs_requests_total", status="client_error") == 1
    assert levels == n_texts
    hist = fams["ray_dihs_request_duration_seconds"]
    count = sum(s.value for s in hist.samples if s.name.endswith("_count"))
    assert count == n_texts
    heads = fams["ray_dihs_active_heads"]
    assert sum(s.value for s in heads.samples if s.name.endswith("_count")) == n_texts
    for name, kind in expected.items():
        assert name.removesuffix("_total") in fams, f"{name} not exported"
        assert fams[name.removesuffix("_total")].type == kind
