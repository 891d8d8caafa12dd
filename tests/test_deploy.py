"""deploy/ checked offline: Serve configs, the settings, Prometheus rules, the Grafana dashboard, the
Dockerfile.

- serveConfigV2 and deploy/serve_config.yaml with Ray's ServeDeploySchema, no unknown keys, an
  importable import_path, args that are Settings fields, and Serve options equal to build_app's.
- The RayService's Pods: ports, probes, settings, GPUs (tests/test_manifests.py validates every
  rendered object against its schema and checks Pod Security, PDB, dashboard and PrometheusRule).
- promtool: config, rules and the rules' unit tests (deploy/prometheus/alerts_test.yml).
- Every metric name in alerts.yml and dashboard.json is one that service/metrics.py exports.
- The Dockerfile parsed (layers, user, entrypoint), and built and run where a Docker daemon answers.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from service.load import LoadConfig
from service.metrics import exported_names
from service.settings import Settings
from tests.conftest import need_debian_tool
from tests.manifests import (
    K8S,
    kustomize_cmd,
    render,
    validate_core,
)
from tests.manifests import (
    load_all as _load_all,
)
from tests.manifests import (
    one as _one,
)
from tests.manifests import (
    ray_groups as _groups,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")  # the KubeRay overlays (overlays/kserve has no RayService)
BUNDLE_IN_IMAGE = "/models/bundle"
CUSTOM_KINDS = {"RayService", "PodMonitor", "PrometheusRule"}


def _base_docs() -> list[dict]:
    """The objects of deploy/k8s/base and deploy/k8s/common as written (no kustomize needed)."""
    docs = []
    for folder in (K8S / "base", K8S / "common"):
        kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
        docs += [d for r in kust["resources"] if (folder / r).is_file() for d in _load_all(folder / r)]
    return docs


def _build(overlay: str) -> list[dict]:
    return render(overlay)


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request) -> tuple[str, list[dict]]:
    return request.param, _build(request.param)


def _serve_config(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]  # KubeRay's Ray container is the first


# --- Kubernetes objects ---------------------------------------------------------------------------


def _pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """Each RayService group's template as a Pod and a PodTemplate (patch files included, unrendered)."""
    objs = []
    for d in docs:
        if d["kind"] == "RayService":
            for name, group in _groups(d):
                t = group["template"]
                meta = {**t.get("metadata", {}), "name": f"{d['metadata']['name']}-{name}"}
                objs.append(
                    (
                        f"RayService {name} group as Pod",
                        {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]},
                    )
                )
                objs.append(
                    (
                        f"RayService {name} group as PodTemplate",
                        {
                            "apiVersion": "v1",
                            "kind": "PodTemplate",
                            "metadata": {"name": meta["name"]},
                            "template": t,
                        },
                    )
                )
        elif d["kind"] not in CUSTOM_KINDS:
            objs.append((f"{d['kind']} {d['metadata']['name']}", d))
    return objs


def test_kubernetes_validate_catches_what_it_should():
    """The validator itself: strict mode rejects a misspelt field, and a RayService is not checked at all."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    rs = _one(_base_docs(), "RayService")
    (_, pod), *_ = _pod_templates([rs])
    validate_core(pod)
    bad = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["readinesProbe"] = bad["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(bad)
    with pytest.raises(SchemaNotFoundError):
        validate_core(rs)


def test_base_and_patch_objects_validate_strictly():
    """The files as written, without kustomize (tests/test_manifests.py checks what kustomize renders)."""
    docs = _base_docs() + _load_all(K8S / "overlays" / "cpu" / "rayservice-cpu.yaml")
    docs += _load_all(K8S / "overlays" / "kserve" / "pdb.yaml")
    checked = []
    for what, obj in _pod_templates(docs):
        validate_core(obj)
        checked.append(what)
    assert {
        "ConfigMap dihs-settings",
        "Service dihs",
        "PodDisruptionBudget dihs-workers",
        "PodDisruptionBudget dihs-predictor",
        "RayService head group as Pod",
        "RayService gpu group as Pod",
        "RayService cpu group as PodTemplate",
    } <= set(checked)


def test_kustomizations_resolve():
    """Without kustomize: every resource and patch a kustomization names exists and parses."""
    for kust_file in sorted([*K8S.rglob("kustomization.yaml"), DEPLOY / "grafana" / "kustomization.yaml"]):
        kust = yaml.safe_load(kust_file.read_text())
        assert kust["kind"] == "Kustomization"
        generated = [f.split("=")[-1] for g in kust.get("configMapGenerator", []) for f in g.get("files", [])]
        for entry in kust.get("resources", []) + [p["path"] for p in kust.get("patches", [])] + generated:
            path = (kust_file.parent / entry).resolve()
            assert path.exists(), f"{kust_file}: {entry} does not exist"
            files = [path / "kustomization.yaml"] if path.is_dir() else [path]
            for f in files:
                assert f.suffix == ".json" or _load_all(f), f"{f} is empty"


def test_overlays_pick_image_and_gpu(built):
    overlay, docs = built
    rs = _one(docs, "RayService")
    groups = _groups(rs)
    images = {_ray_container(g["template"])["image"] for _, g in groups}
    assert images == {"dihs-serve:" + {"cpu": "cpu", "gpu": "cuda"}[overlay]}
    gpus = {
        name: _ray_container(g["template"])["resources"]["limits"].get("nvidia.com/gpu") for name, g in groups
    }
    deployments = {d["name"]: d for d in _serve_config(rs)["applications"][0]["deployments"]}
    num_gpus = deployments["DIHSModel"]["ray_actor_options"].get("num_gpus", 0)
    if overlay == "gpu":
        assert gpus == {"head": None, "gpu": "1"} and num_gpus == 1
    else:
        assert set(gpus.values()) == {None} and "nvidia.com/gpu" not in json.dumps(rs) and num_gpus == 0


def _rayservices() -> list[tuple[str, dict]]:
    """The base RayService and the cpu overlay's patched one (built with kustomize where it exists)."""
    base = _one(_base_docs(), "RayService")
    out = [("base", base)]
    if kustomize_cmd():
        out += [(o, _one(_build(o), "RayService")) for o in OVERLAYS]
    else:  # the patch replaces serveConfigV2 and workerGroupSpecs whole (a merge patch of a custom resource)
        patch = _one(_load_all(K8S / "overlays" / "cpu" / "rayservice-cpu.yaml"), "RayService")
        cpu = copy.deepcopy(base)
        cpu["spec"]["serveConfigV2"] = patch["spec"]["serveConfigV2"]
        cpu["spec"]["rayClusterConfig"]["workerGroupSpecs"] = patch["spec"]["rayClusterConfig"][
            "workerGroupSpecs"
        ]
        out.append(("cpu", cpu))
    return out


@pytest.mark.parametrize("which", ["base", "cpu"])
def test_rayservice_pods(which):
    (rs,) = [r for name, r in _rayservices() if name == which]
    docs = _base_docs()
    config_map, service, monitor = _one(docs, "ConfigMap"), _one(docs, "Service"), _one(docs, "PodMonitor")
    serve_port = _serve_config(rs)["http_options"]["port"]
    cluster = rs["spec"]["rayClusterConfig"]
    assert rs["apiVersion"] == "ray.io/v1" and cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head takes no replicas"
    workers = cluster["workerGroupSpecs"]
    assert workers, "replicas run on workers"
    for name, group in _groups(rs):
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), (
            f"{name}: KubeRay wants strings"
        )
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        spec = group["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        c = _ray_container(group["template"])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == 8080 and ports["serve"] == serve_port
        res = c["resources"]
        assert res["requests"] and res["limits"], f"{name}: requests and limits"
        assert res["requests"].get("nvidia.com/gpu") == res["limits"].get("nvidia.com/gpu")
        assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in c["envFrom"]
        labels = group["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), f"{name}: not scraped"
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
        for env in c.get("env", []):
            if env["name"].startswith("DIHS_"):
                assert env["name"][5:].lower() in Settings.model_fields, env["name"]
        if name == "head":
            assert "readinessProbe" not in c, (
                "KubeRay's head probe: the app is deployed only once the head is ready"
            )
            continue
        probe = c["readinessProbe"]["httpGet"]
        assert probe["path"] == "/v2/health/ready" and ports[probe["port"]] == serve_port
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        selector = service["spec"]["selector"]
        labels = group["template"]["metadata"]["labels"] | {
            "ray.io/node-type": "worker"
        }  # KubeRay adds the latter
        assert selector.items() <= labels.items(), f"Service dihs does not select the {name} workers"
        assert service["spec"]["ports"][0]["targetPort"] in ports
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is True


# --- Serve configs --------------------------------------------------------------------------------


def _serve_configs() -> list[tuple[str, dict]]:
    configs = [("deploy/serve_config.yaml", yaml.safe_load((DEPLOY / "serve_config.yaml").read_text()))]
    configs += [(f"serveConfigV2 ({name})", _serve_config(rs)) for name, rs in _rayservices()]
    return configs


def _unknown_keys(cfg: dict) -> list[str]:
    """Keys Ray's schemas would silently ignore (they do not forbid extras): typos go unnoticed otherwise."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    def extra(d: dict, model, where: str) -> list[str]:
        return [f"{where}.{k}" for k in d if k not in model.model_fields]

    bad = extra(cfg, ServeDeploySchema, "") + extra(
        cfg.get("http_options", {}), HTTPOptionsSchema, "http_options"
    )
    for app in cfg["applications"]:
        bad += extra(app, ServeApplicationSchema, app["name"])
        for d in app.get("deployments", []):
            bad += extra(d, DeploymentSchema, f"{app['name']}.{d['name']}")
            bad += extra(
                d.get("autoscaling_config", {}),
                AutoscalingConfig,
                f"{app['name']}.{d['name']}.autoscaling_config",
            )
    return bad


def _settings(args: dict, env: dict[str, str], monkeypatch) -> Settings:
    for k in list(os.environ):
        if k.startswith("DIHS_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings(**args)  # validates every value; the bundle is not loaded


def test_unknown_key_check_can_fail():
    cfg = yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())
    cfg["applications"][0]["deployments"][0]["autoscaling_config"]["max_replica"] = 3
    cfg["applications"][0]["deployments"][0]["max_ongoing_request"] = 3
    assert _unknown_keys(cfg) == [
        "dihs.DIHSModel.max_ongoing_request",
        "dihs.DIHSModel.autoscaling_config.max_replica",
    ]


@pytest.mark.parametrize("name,cfg", [pytest.param(n, c, id=n) for n, c in _serve_configs()])
def test_serve_config(name, cfg, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from service.app import DIHSModel

    schema = ServeDeploySchema.model_validate(cfg)
    assert not _unknown_keys(cfg), f"{name}: {_unknown_keys(cfg)}"
    assert cfg["http_options"]["host"] == "0.0.0.0"
    (app,) = schema.applications
    assert (app.name, app.route_prefix) == ("dihs", "/")
    module, attr = app.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attr)), app.import_path
    assert app.args["bundle"] == BUNDLE_IN_IMAGE

    env = {} if name.startswith("deploy/") else _one(_base_docs(), "ConfigMap")["data"]
    overlap = {f"DIHS_{k.upper()}" for k in app.args} & set(env)
    assert not overlap, f"{name}: set in both args and the ConfigMap (args win): {overlap}"
    s = _settings(app.args, env, monkeypatch)

    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {DIHSModel.name}, "one deployment: the model replica serves HTTP itself"
    model = deployments["DIHSModel"]
    code = _build_app_options(app.args)
    (written,) = [d for d in cfg["applications"][0]["deployments"] if d["name"] == "DIHSModel"]
    assert set(written) - set(code) <= {"name", "autoscaling_config"}, (
        f"{name}: options build_app does not set (a config must not quietly change the app): "
        f"{set(written) - set(code)}"
    )
    for key, value in written.items():
        if key == "ray_actor_options":
            assert {k: value.get(k) for k in code[key]} == code[key], (
                f"{name}: ray_actor_options differ from build_app's"
            )
        elif key in code:
            assert value == code[key], f"{name}: {key} {value} but build_app sets {code[key]}"
    # the replica, not Serve's proxy, refuses a burst (in the API's shape, counted): Serve admits more
    assert model.max_ongoing_requests == model.max_queued_requests == s.serve_limit > s.replica_capacity
    assert s.max_ongoing_requests >= s.max_batch_size
    auto = model.autoscaling_config
    assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
    full_pressure = LoadConfig.for_replica(s.slo_ms / 1e3, s.max_batch_size).queue_capacity
    assert s.max_batch_size <= auto["target_ongoing_requests"] <= full_pressure, (
        "scale out between one full batch and full load pressure"
    )
    assert model.ray_actor_options.num_cpus == s.replica_cpus == s.torch_threads


def _build_app_options(args: dict) -> dict:
    """The Serve options service.app.build_app gives DIHSModel for these args (and the DIHS_* env now)."""
    from service.app import build_app

    dep = build_app(args)._bound_deployment  # Application has no public accessor for its deployment
    return {
        "max_ongoing_requests": dep.max_ongoing_requests,
        "max_queued_requests": dep.max_queued_requests,
        "ray_actor_options": dict(dep.ray_actor_options),
        "num_replicas": dep.num_replicas,
        "graceful_shutdown_timeout_s": dep._deployment_config.graceful_shutdown_timeout_s,
        "user_config": dep.user_config,
    }


def test_config_check_catches_a_shrunk_ingress(monkeypatch):
    """A config that shrinks Serve's limits below build_app's (Ray's proxy would then shed a burst in its
    own plain-text 503, uncounted) fails test_serve_config."""
    cfg = yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())
    cfg["applications"][0]["deployments"][0].update(max_ongoing_requests=128, max_queued_requests=256)
    with pytest.raises(AssertionError, match="max_ongoing_requests 128 but build_app sets 1536"):
        test_serve_config("deploy/serve_config.yaml", cfg, monkeypatch)


def test_serve_configs_agree():
    """The cpu overlay runs serve_config.yaml's application; the base differs only in a GPU per replica."""
    configs = dict(_serve_configs())
    local = configs["deploy/serve_config.yaml"]
    assert configs["serveConfigV2 (cpu)"] == local
    gpu = copy.deepcopy(local)
    gpu["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"] = 1
    assert configs["serveConfigV2 (base)"] == gpu
    if "serveConfigV2 (gpu)" in configs:
        assert configs["serveConfigV2 (gpu)"] == gpu


def test_configmap_keys_are_settings(monkeypatch):
    data = _one(_base_docs(), "ConfigMap")["data"]
    for key, value in data.items():
        assert key.startswith("DIHS_") and key[5:].lower() in Settings.model_fields, f"{key} is no setting"
        assert isinstance(value, str)
    s = _settings({}, data, monkeypatch)
    assert s.device == "auto" and s.model_name == data["DIHS_MODEL_NAME"]


# --- Dockerfile -----------------------------------------------------------------------------------


def _dockerfile() -> list:
    dockerfile = pytest.importorskip("dockerfile", reason="pip install dockerfile (the dev extra has it)")
    return dockerfile.parse_file(str(DEPLOY / "Dockerfile"))


def _stages(cmds: list) -> dict[str, list]:
    """Stage name -> its instructions (after its FROM)."""
    out, name = {}, None
    for c in cmds:
        if c.cmd == "FROM":
            name = c.value[-1]
            out[name] = []
        elif name is not None:
            out[name].append(c)
    return out


def test_dockerfile():
    cmds = _dockerfile()
    stages = _stages(cmds)
    assert list(stages) == ["runtime", "baked", "trained", "mounted"], (
        "the last stage (the default) mounts its bundle"
    )
    args = {
        c.value[0].split("=")[0]: c.value[0].split("=", 1)[1]
        for c in cmds
        if c.cmd == "ARG" and "=" in c.value[0]
    }
    assert args["TORCH_VERSION"] == "2.13.0" and args["TORCH_INDEX"].endswith("/whl/cpu")
    env = " ".join(" ".join(c.value) for c in cmds if c.cmd == "ENV")
    assert f"DIHS_BUNDLE {BUNDLE_IN_IMAGE}" in env or f"DIHS_BUNDLE={BUNDLE_IN_IMAGE}" in env
    assert "HF_HUB_OFFLINE" in env, "nothing is downloaded at run time"
    for c in cmds:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                if not src.startswith("$"):
                    assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_dockerfile_installs_dependencies_before_the_code():
    """A code change rebuilds only the layers after the code's COPY: torch, then pyproject's own
    dependencies (Ray pinned there) from pyproject.toml alone, then the code without resolving anything."""
    runtime = _stages(_dockerfile())["runtime"]

    def line(pred, what: str) -> int:
        found = [c.start_line for c in runtime if pred(c)]
        assert found, f"no {what} in the runtime stage"
        return found[0]

    torch = line(lambda c: c.cmd == "RUN" and "torch==" in c.value[0], "torch install")
    pyproject = line(lambda c: c.cmd == "COPY" and c.value[0] == "pyproject.toml", "COPY pyproject.toml")
    deps = line(
        lambda c: c.cmd == "RUN" and "pip install -r" in c.value[0] and "pyproject.toml" in c.value[0],
        "install of pyproject's dependencies",
    )
    code = line(
        lambda c: c.cmd == "COPY" and c.value[0] in ("dihs_model", "dihs_cli", "service"), "COPY of the code"
    )
    project = line(
        lambda c: c.cmd == "RUN" and "pip install --no-deps /tmp/src" in c.value[0], "install of the code"
    )
    assert torch < pyproject < deps < code < project
    copies_before_deps = [c.value[0] for c in runtime if c.cmd == "COPY" and c.start_line < deps]
    assert copies_before_deps == ["pyproject.toml"], "only pyproject.toml may invalidate the dependency layer"
    assert "ray" in json.dumps(_pyproject_deps()) and any(
        d.startswith("ray[serve]==") for d in _pyproject_deps()
    ), "Ray is pinned in pyproject (the image installs that list)"


def _pyproject_deps() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_dockerfile_runs_non_root_with_signals_reaching_dihs():
    cmds = _dockerfile()
    for name, stage in _stages(cmds).items():
        users = [c.value[0] for c in stage if c.cmd == "USER"]
        if name == "runtime" or users:
            assert users, "the runtime stage sets its user"
            uid = users[-1].split(":")[0]
            assert uid.isdigit() and uid != "0", (
                f"{name}: USER {users[-1]}: numeric and not root (runAsNonRoot checks it)"
            )
    (entry,) = [c for c in cmds if c.cmd == "ENTRYPOINT"]
    assert entry.json and entry.value[0].endswith("/tini") and entry.value[-1] == "--", (
        "exec form, tini as PID 1: it forwards SIGTERM to dihs and reaps Ray's orphans"
    )
    (cmd,) = [c for c in cmds if c.cmd == "CMD"]
    assert cmd.json and list(cmd.value) == ["dihs", "serve"], "exec form: no shell between tini and dihs"
    (apt,) = [c for c in cmds if c.cmd == "RUN" and "apt-get install" in c.value[0]]
    assert re.search(r"\btini\b", apt.value[0])


def _docker() -> str:
    """The docker CLI, where a daemon answers; a skip saying why otherwise."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI: the image build is checked where Docker runs (static checks above)")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        pytest.skip(
            f"no Docker daemon answers `docker info`: {(info.stderr or info.stdout).strip().splitlines()[-1]}"
        )
    return docker


def test_image_builds_runs_non_root_and_stops_on_sigterm():
    """Build the default target, then: uid 1000, Ray at pyproject's pin, and `docker stop` (SIGTERM)
    ends the container at once with SIGTERM's status (143), not after its timeout with SIGKILL's (137)."""
    docker = _docker()
    tag = "dihs-serve:test"
    build = subprocess.run(
        [docker, "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert build.returncode == 0, build.stderr[-4000:]

    def run(*argv: str) -> str:
        out = subprocess.run([docker, "run", "--rm", tag, *argv], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    assert run("id", "-u") == "1000"
    (pin,) = [d.split("==")[1] for d in _pyproject_deps() if d.startswith("ray[serve]==")]
    assert run("python", "-c", "import ray; print(ray.__version__)").startswith(pin.rstrip("*"))
    cid = subprocess.run(
        [docker, "run", "-d", tag, "sleep", "600"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    try:
        t0 = time.monotonic()
        subprocess.run([docker, "stop", "-t", "30", cid], capture_output=True, timeout=90, check=True)
        took = time.monotonic() - t0
        code = subprocess.run(
            [docker, "inspect", "-f", "{{.State.ExitCode}}", cid], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    finally:
        subprocess.run([docker, "rm", "-f", cid], capture_output=True, timeout=60)
    assert code == "143" and took < 25, f"SIGTERM lost at PID 1: exit {code} after {took:.1f} s"


# --- Prometheus -----------------------------------------------------------------------------------


def test_promtool_check_config():
    promtool = need_debian_tool("promtool")
    out = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_rules():
    promtool = need_debian_tool("promtool")
    out = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_rule_unit_tests():
    """Each alert fires on a bad series and stays quiet on a healthy one (alerts_test.yml)."""
    promtool = need_debian_tool("promtool")
    out = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_latency_alert_uses_the_configured_slo():
    rules = {
        r["alert"]: r
        for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    slo_s = float(_one(_base_docs(), "ConfigMap")["data"]["DIHS_SLO_MS"]) / 1000
    assert slo_s == Settings.model_fields["slo_ms"].default / 1000
    threshold = float(
        re.search(r">\s*([0-9.]+)\s*$", rules["DIHSLatencyP95OverSLO"]["expr"].strip()).group(1)
    )
    assert threshold == slo_s


# --- Metric names in PromQL -----------------------------------------------------------------------

KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (also Grafana's label_values(metric, label))."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    e = re.sub(r"\$\{?\w+\}?", "1m", e)  # Grafana variables
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    e = re.sub(r"label_values\s*\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)", e):
        if e[m.end() :].lstrip().startswith("(") or m.group(1).lower() in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group(1))
    return names


def unknown_metric_names(names: set[str]) -> set[str]:
    exported = exported_names()
    bad = set()
    for n in names:
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n in exported or (base != n and exported.get(base) == "histogram"):
            continue
        bad.add(n)
    return bad


def test_metric_name_extractor_catches_made_up_names():
    q = (
        "histogram_quantile(0.95, sum by (le, level) (rate(ray_dihs_request_duration_seconds_bucket"
        '{model=~"$model",status="server_error"}[$__rate_interval]))) / on(model) group_left '
        "sum(rate(ray_dihs_made_up_total[5m] offset 1h)) > 1e3"
    )
    assert promql_metric_names(q) == {"ray_dihs_request_duration_seconds_bucket", "ray_dihs_made_up_total"}
    assert unknown_metric_names(promql_metric_names(q)) == {"ray_dihs_made_up_total"}
    # a counter has no _count, a gauge no _bucket; Ray's names have the ray_ prefix and _total
    assert unknown_metric_names(
        {
            "ray_dihs_requests_count",
            "ray_dihs_load_pressure_bucket",
            "dihs_requests_total",
            "ray_dihs_requests",
        }
    ) == {
        "ray_dihs_requests_count",
        "ray_dihs_load_pressure_bucket",
        "dihs_requests_total",
        "ray_dihs_requests",
    }
    assert promql_metric_names("label_values(ray_dihs_requests_total, model)") == {"ray_dihs_requests_total"}


def _alert_exprs() -> list[str]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())


def _dashboard_exprs() -> list[str]:
    dash = _dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            exprs.append(v["query"]["query"] if isinstance(v["query"], dict) else v["query"])
    return exprs


@pytest.mark.parametrize("source", ["alerts.yml", "dashboard.json"])
def test_promql_uses_only_exported_metrics(source):
    exprs = _alert_exprs() if source == "alerts.yml" else _dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert not unknown_metric_names(names), f"{source}: {sorted(unknown_metric_names(names))} in {expr!r}"


def test_dashboard_shows_every_metric():
    used = set()
    for expr in _dashboard_exprs():
        used |= {
            re.sub(r"_(bucket|sum|count)$", "", n) if n not in exported_names() else n
            for n in promql_metric_names(expr)
        }
    assert used == set(exported_names()), f"no panel for {set(exported_names()) - used}"


def test_dashboard_structure():
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dash["panels"]}
    for wanted in (
        "Requests/s by status",
        "Latency percentiles by budget level",
        "Active heads ratio",
        "Budget level mix",
        "Load pressure",
        "Queue depth",
        "Batch size",
        "GPU utilization",
        "GPU memory used",
        "CPU utilization",
    ):
        assert wanted in titles
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
