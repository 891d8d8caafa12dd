"""Tiny random encoders of every supported family, and a tiny tokenizer: no downloads, no Ray."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModel, BertConfig, BertTokenizerFast, DistilBertConfig, RobertaConfig

from dihs_model.budgeted import BudgetedClassifier
from service.ports import free_port  # noqa: F401 (the tests' ports: one helper with the service's)

WORDS = "the a good bad movie film great awful plot actor love hate fun dull story end".split()


def tiny_config(family: str):
    common = dict(vocab_size=64, max_position_embeddings=64)
    if family == "bert":
        return BertConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            hidden_act="gelu",
            **common,
        )
    if family == "roberta":
        return RobertaConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            pad_token_id=1,
            **common,
        )
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64, **common)
    raise ValueError(family)


def tiny_encoder(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config(family), attn_implementation="sdpa").eval()


def tiny_classifier(family: str = "bert", n_labels: int = 3, seed: int = 0) -> BudgetedClassifier:
    enc = tiny_encoder(family, seed)
    torch.manual_seed(seed + 1)
    return BudgetedClassifier(enc, n_labels).eval()


def random_batch(B: int = 4, T: int = 12, seed: int = 0, pad: bool = True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if pad:
        for b in range(1, B):
            mask[b, T - 2 * b :] = 0
    return ids, mask


def random_heads(L: int, H: int, seed: int):
    """A head selection and the equivalent [L, H] head mask: per layer any subset, sometimes empty;
    odd seeds give prefixes (int counts: the view path), even seeds index lists."""
    g = torch.Generator().manual_seed(seed)
    heads = []
    for _ in range(L):
        k = int(torch.randint(0, H + 1, (1,), generator=g))
        heads.append(k if seed % 2 else sorted(torch.randperm(H, generator=g)[:k].tolist()))
    mask = torch.zeros(L, H)
    for layer, c in enumerate(heads):
        mask[layer, list(range(c)) if isinstance(c, int) else c] = 1.0
    return heads, mask


def distinct_texts(n: int, seed: int = 0) -> list[str]:
    """n different texts: a repeated text's margin equals the threshold its earlier copy set (a tie
    that float noise between batch sizes decides), so no text repeats."""
    rng, out = random.Random(seed), {}
    while len(out) < n:
        t = " ".join(rng.choices(WORDS, k=rng.randint(2, 7)))
        out.setdefault(t, None)
    return list(out)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A local safetensors BERT checkpoint folder with a word-level tokenizer: what `--model` takes."""
    return make_tiny_checkpoint(tmp_path)


def make_tiny_checkpoint(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tok.vocab_size == len(vocab)
    ckpt = tmp_path / "tiny-bert"
    cfg = tiny_config("bert")
    cfg.vocab_size = len(vocab)
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    return ckpt


def write_reviews_csv(path, n: int = 60, text_col: str = "text", label_col: str = "label"):
    """A learnable two-class CSV: positive words vs negative words."""
    import csv
    import random

    rng = random.Random(0)
    pos, neg = ["good", "great", "love", "fun"], ["bad", "awful", "hate", "dull"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([text_col, label_col])
        for i in range(n):
            words = pos if i % 2 else neg
            w.writerow(
                [
                    " ".join(rng.choice(words + ["the", "movie", "plot"]) for _ in range(6))
                    + " "
                    + words[i % 4],
                    "pos" if i % 2 else "neg",
                ]
            )
    return path


def tiny_calibrated_bundle(tmp_path):
    """A tiny two-class bundle with importance, ladder and complexity calibration."""
    from dihs_model.bundle import new_bundle
    from dihs_model.calibrate import calibrate_bundle
    from dihs_model.data import Examples

    texts = ["good great fun", "bad awful dull", "love the movie", "hate the plot"] * 4
    return calibrate_bundle(
        new_bundle(str(make_tiny_checkpoint(tmp_path)), ["neg", "pos"], 32),
        Examples(texts, [1, 0, 1, 0] * 4, ["neg", "pos"]),
        progress=False,
    )


class ManualClock:
    """A clock tests move by hand (LoadTracker, PlanController): no test waits on real time."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def overload(load, backlog: int = 40) -> float:
    """A backlog far over capacity on a LoadTracker built with a ManualClock, held for a second (the
    pressure's rise time constant is much shorter): returns the published pressure, then about 1."""
    for _ in range(backlog):
        load.started()
    load.clock.advance(1.0)
    return load.pressure()


def each_plan_cheaper(engine) -> None:
    """Give the engine's controller plan times in which each plan is cheaper than the one before. The
    tiny model's time is overhead (a cascade's two passes cost about twice the full model's one), so
    from its measured times the controller rightly never leaves the full model; tests of what a
    cheaper plan serves need one to be cheaper."""
    engine.controller.plan_times = [{1: 0.01 / (k + 1)} for k in range(len(engine.plans))]


def start_tiny_serve(tmp_path, **settings) -> dict:
    """Ray + Serve on loopback serving a tiny bundle (one per test module: ~30 s here).

    Returns {"base": HTTP URL, "metrics": Ray metrics URL, "bundle": path}; stop with stop_serve().
    """
    import os

    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    from dihs_model.bundle import save_bundle
    from service.app import build_app, ray_env
    from service.settings import Settings

    path = save_bundle(tiny_calibrated_bundle(tmp_path), tmp_path / "bundle")
    http_port, metrics_port = free_port(), free_port()
    env = {"RAY_AUTH_MODE": "disabled", **ray_env(Settings(**settings))}  # the ingress `dihs serve` runs
    for k in env:  # put back by stop_serve
        _ENV_BEFORE.setdefault(k, os.environ.get(k))
    os.environ.update(env)
    ray.init(
        num_cpus=4,
        _metrics_export_port=metrics_port,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": env},
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": http_port}, logging_config={"enable_access_log": False}
        )
        args = {"bundle": str(path), "model_name": "tiny", **settings}
        serve.run(build_app(args), name="dihs", route_prefix="/")
    except BaseException:
        stop_serve()  # the next module can start its own
        raise
    return {
        "base": f"http://127.0.0.1:{http_port}",
        "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        "bundle": path,
    }


_ENV_BEFORE: dict = {}  # what start_tiny_serve changed in os.environ, to put back


def stop_serve() -> None:
    import os

    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        for k, v in _ENV_BEFORE.items():  # later tests (a `ray start` cluster, say) must not inherit them
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _ENV_BEFORE.clear()


def need_debian_tool(name: str, package: str = "prometheus") -> str:
    """Path of a tool from a Debian package: a failure in CI (the Makefile installs it), a skip elsewhere."""
    import os
    import shutil

    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: install Debian's {package} package (apt-get install -y {package})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with pytest's own exit status once everything is reported, without the
    interpreter's teardown: a fresh-clone CI run once passed every test, printed its summary, then
    segfaulted while the interpreter destroyed what Ray, torch and their threads had left (exit 139,
    no test failing). The results and the status are pytest's; only that teardown is skipped."""
    import os
    import sys

    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:  # --help, collection-only runs and the like: the normal exit
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


_EXIT_STATUS = pytest.StashKey[int]()
