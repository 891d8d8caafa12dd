"""The worked example of docs/extend.md: a serving policy added as one Router subclass, plugged into
a real Engine, changes what auto texts run and says so in their reason, with nothing else edited."""

from service.backend import EngineBackend
from service.engine import Engine
from service.http import build_http_app
from service.load import LoadConfig, LoadTracker
from service.metrics import NullMetrics
from service.routing import Route, Router
from service.settings import Settings
from tests.conftest import ManualClock, each_plan_cheaper, overload, tiny_calibrated_bundle


class LongTextsOnTheFullModel(Router):
    """Auto texts of more than `tokens` tokens run the full model, whatever the load."""

    def __init__(self, router: Router, tokens: int):
        super().__init__(router.ladder_policy, router.controller, router.plan_targets)
        self.tokens = tokens

    def routes(self, items, enc, pressure, plan=None):
        signals, routes = super().routes(items, enc, pressure, plan)
        lengths = enc["attention_mask"].sum(1).tolist()
        out = []
        for it, route, n in zip(items, routes, lengths):
            # plan_for(it, 0): the full model, or the nearest plan within the text's own FLOPs limits
            chosen = self.plan_for(it, 0) if it.mode == "auto" and n > self.tokens else None
            out.append(
                route if chosen is None else Route(chosen[0], f"{chosen[1]}; over {self.tokens} tokens")
            )
        return signals, out


def test_a_router_subclass_is_a_new_serving_policy(tmp_path):
    from fastapi.testclient import TestClient

    load = LoadTracker(LoadConfig(slo_s=0.25, queue_capacity=32), clock=ManualClock())
    engine = Engine(tiny_calibrated_bundle(tmp_path), "tiny", load, NullMetrics())
    each_plan_cheaper(engine)
    engine.router = LongTextsOnTheFullModel(engine.router, tokens=6)
    client = TestClient(
        build_http_app(Settings(model_name="tiny"), EngineBackend(engine, "tiny"), NullMetrics())
    )
    overload(engine.load)  # a backlog far over capacity: short texts take a cheaper plan
    short, long = client.post(
        "/v1/classify", json={"texts": ["good fun", "good fun and a great movie with a fine plot"]}
    ).json()["results"]
    assert short["plan"] != "full" and short["flops_ratio"] < 1.0
    assert long["plan"] == "full" and long["passes"][0]["budget"] == "f100"
    assert long["reason"].endswith("; over 6 tokens")
    capped = client.post(
        "/v1/classify",
        json={"text": "good fun and a great movie with a fine plot", "budget": {"max_flops_ratio": 0.5}},
    ).json()["results"][0]
    assert capped["plan"] != "full" and "capped by max_flops_ratio 0.5; over 6 tokens" in capped["reason"]
