"""Every object `kubectl kustomize` renders for each overlay of deploy/k8s, checked as the cluster would:

- custom resources (RayService, PodMonitor, PrometheusRule) against their CRDs' openAPIV3Schema, an
  unknown field refused (the API server would prune it silently); the InferenceService (no KServe
  CRD offline) along the kserve SDK's models; everything else with kubernetes-validate --strict,
  and every Pod the objects make (RayService groups, the KServe predictor) as a Pod;
- Pod Security "restricted" for every Pod, the autoscaler sidecar included; /dev/shm for Ray;
- a PodDisruptionBudget, the PodMonitor and the Services over the serving Pods;
- the Grafana dashboard ConfigMap and the PrometheusRule, generated from their one source.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from tests.manifests import (
    CRD_FILES,
    DEPLOY,
    OVERLAYS,
    ROOT,
    crd_errors,
    kserve_errors,
    one,
    pods,
    ray_groups,
    render,
    restricted_violations,
    validate_core,
)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_every_overlay_is_rendered():
    assert set(OVERLAYS) == {"cpu", "gpu", "kserve"}


# --- schemas --------------------------------------------------------------------------------------


def test_crd_check_refuses_unknown_fields_and_wrong_types():
    rs = one(render("cpu"), "RayService")
    assert crd_errors(rs) == []
    bad = copy.deepcopy(rs)
    cluster = bad["spec"]["rayClusterConfig"]
    cluster["headGroupSpec"]["rayStartParam"] = cluster["headGroupSpec"].pop("rayStartParams")  # misspelt
    cluster["autoscalerOptions"]["idleTimeoutSeconds"] = "300"  # a string where the CRD says integer
    cluster["autoscalerOptions"]["securityContext"]["capabilites"] = {}  # deep in a core type
    bad["metadata"]["labelz"] = {}
    errors = "\n".join(crd_errors(bad))
    for wanted in (
        "'rayStartParam' was unexpected",
        "idleTimeoutSeconds: '300' is not of type 'integer'",
        "'capabilites' was unexpected",
        "metadata:",
    ):
        assert wanted in errors, errors
    monitor = copy.deepcopy(one(render("cpu"), "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    assert any("'intervall' was unexpected" in e for e in crd_errors(monitor))


def test_rendered_custom_resources_validate_against_their_crds(rendered):
    overlay, docs = rendered
    custom = [d for d in docs if d["kind"] in CRD_FILES]
    assert {d["kind"] for d in custom} == set(CRD_FILES) - ({"RayService"} if overlay == "kserve" else set())
    for d in custom:
        errors = crd_errors(d)
        assert not errors, f"{overlay}: {d['kind']} {d['metadata']['name']}:\n" + "\n".join(errors)


def test_rendered_core_objects_and_pods_validate(rendered):
    overlay, docs = rendered
    core = [d for d in docs if d["kind"] not in CRD_FILES and d["kind"] != "InferenceService"]
    serving = {"Service"} if overlay != "kserve" else set()
    assert {d["kind"] for d in core} == serving | {"ConfigMap", "PodDisruptionBudget"}
    objects = [(f"{d['kind']} {d['metadata']['name']}", d) for d in core] + [
        (f"{w} as a Pod", p) for w, p in pods(docs)
    ]
    for what, obj in objects:
        try:
            validate_core(obj)
        except Exception as e:  # kubernetes-validate names what is wrong
            pytest.fail(f"{overlay}: {what}: {str(e).splitlines()[0]}")
    isvcs = [d for d in docs if d["kind"] == "InferenceService"]
    assert len(isvcs) == (overlay == "kserve")
    for d in isvcs:
        assert not kserve_errors(d), kserve_errors(d)


def test_serve_config_v2_is_a_serve_deploy_schema(rendered):
    from ray.serve.schema import ServeDeploySchema

    overlay, docs = rendered
    for d in docs:
        if d["kind"] == "RayService":
            ServeDeploySchema.model_validate(yaml.safe_load(d["spec"]["serveConfigV2"]))


def test_kserve_check_refuses_unknown_fields():
    isvc = one(render("kserve"), "InferenceService")
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["minReplica"] = 1
    bad["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpget"] = {}
    bad["spec"]["predictor"]["scaleTarget"] = "70"
    assert sorted(kserve_errors(bad)) == [
        ".spec.predictor.containers[0].readinessProbe.httpget: no such field in V1Probe",
        ".spec.predictor.minReplica: no such field in V1beta1PredictorSpec",
        ".spec.predictor.scaleTarget: str is not int",
    ]


def test_inferenceservice_runs_this_image_as_the_service(rendered):
    """The fields the KServe deployment relies on (no KServe CRD offline, so said here)."""
    overlay, docs = rendered
    if overlay != "kserve":
        pytest.skip("the InferenceService is in overlays/kserve")
    isvc = one(docs, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment", (
        "Knative (serverless) refuses the /dev/shm emptyDir and the metrics port"
    )
    p = isvc["spec"]["predictor"]
    assert 1 <= p["minReplicas"] <= p["maxReplicas"]
    (c,) = p["containers"]
    assert c["image"] == "dihs-serve:cpu" and c["args"] == ["dihs", "serve"] and "command" not in c, (
        "the image's ENTRYPOINT (tini) stays PID 1"
    )
    ports = [(q["name"], q["containerPort"]) for q in c["ports"]]
    assert ports[0] == ("http1", 8000), "KServe's Service targets the first port: Serve's HTTP"
    assert ("metrics", 8080) in ports
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    settings = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "dihs-settings"
    ]
    assert settings and {"configMapRef": {"name": "dihs-settings"}} in c["envFrom"], (
        "the same DIHS_* settings"
    )
    assert {"name": "DIHS_HOST", "value": "0.0.0.0"} in c["env"]
    from service.settings import Settings

    assert p["terminationGracePeriodSeconds"] > Settings.model_fields["drain_timeout_s"].default, (
        "the drain finishes before the kubelet's SIGKILL"
    )


# --- Pod Security, /dev/shm -----------------------------------------------------------------------


def test_restricted_check_can_fail():
    (_, pod), *_ = pods([one(render("cpu"), "RayService")])
    spec = pod["spec"]
    assert restricted_violations(spec) == []
    bad = copy.deepcopy(spec)
    del bad["securityContext"]["seccompProfile"]
    bad["containers"][-1]["securityContext"].pop("allowPrivilegeEscalation")  # the autoscaler sidecar
    bad["containers"][0]["securityContext"]["capabilities"] = {"drop": ["NET_RAW"], "add": ["SYS_ADMIN"]}
    bad["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    bad["hostNetwork"] = True
    found = restricted_violations(bad)
    for wanted in (
        "hostNetwork is true",
        "volume host: ['hostPath'] not allowed",
        "container ray-head: capabilities do not drop ALL",
        "container ray-head: adds capabilities",
        "container autoscaler: allowPrivilegeEscalation is not false",
        "container ray-head: seccompProfile is None",
    ):
        assert any(f.startswith(wanted) for f in found), (wanted, found)


def test_every_pod_is_restricted(rendered):
    overlay, docs = rendered
    made = pods(docs)
    assert made
    for what, pod in made:
        assert restricted_violations(pod["spec"]) == [], f"{overlay}: {what}"
    if overlay != "kserve":
        head = dict(made)["RayService dihs head group"]
        assert [c["name"] for c in head["spec"]["containers"]] == ["ray-head", "autoscaler"]


def _quantity(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(q[:-2]) * units[q[-2:]] if q[-2:] in units else int(q)


def test_ray_object_store_has_a_memory_shm(rendered):
    """Ray keeps its object store in /dev/shm; a container runtime gives 64 MiB unless a memory
    emptyDir is mounted there. Where rayStartParams bound the store, it fits the volume."""
    overlay, docs = rendered
    bounds = {}
    for d in docs:
        if d["kind"] == "RayService":
            for group, g in ray_groups(d):
                bounds[f"RayService {d['metadata']['name']} {group} group"] = g["rayStartParams"].get(
                    "object-store-memory"
                )
    for what, pod in pods(docs):
        spec = pod["spec"]
        ray = spec["containers"][0]
        (mount,) = [m for m in ray["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        (vol,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert vol["emptyDir"]["medium"] == "Memory", what
        size = _quantity(vol["emptyDir"]["sizeLimit"])
        assert size <= _quantity(ray["resources"]["limits"]["memory"]) // 2, (
            f"{what}: shm counts in the memory limit"
        )
        if bounds.get(what):
            assert int(bounds[what]) < size, f"{what}: object-store-memory does not fit /dev/shm"


# --- what selects the serving Pods ----------------------------------------------------------------


def _serving_labels(docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Labels of the Pods that serve traffic, and of those that do not (the Ray head), as they run
    (KubeRay adds ray.io/node-type and ray.io/is-ray-node; KServe its own, not relied on)."""
    serving, other = [], []
    for what, pod in pods(docs):
        labels = dict(pod["metadata"].get("labels", {}))
        if what.startswith("RayService"):
            head = what.endswith("head group")
            labels |= {"ray.io/node-type": "head" if head else "worker", "ray.io/is-ray-node": "yes"}
            (other if head else serving).append(labels)
        else:
            serving.append(labels)
    return serving, other


def test_pdb_podmonitor_and_service_select_the_serving_pods(rendered):
    overlay, docs = rendered
    serving, other = _serving_labels(docs)
    assert serving
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    sel = pdb["spec"]["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"]
    assert all(sel.items() <= lab.items() for lab in serving), "the PDB covers every serving Pod"
    assert not any(sel.items() <= lab.items() for lab in other), (
        "a one-Pod head under a PDB would block every drain"
    )
    monitor = one(docs, "PodMonitor")
    mon = monitor["spec"]["selector"]["matchLabels"]
    assert all(mon.items() <= lab.items() for lab in serving + other), "every Ray node is scraped"
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    for what, pod in pods(docs):
        assert port in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}, f"{what}: no port {port}"
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert all(svc["spec"]["selector"].items() <= lab.items() for lab in serving)
        assert not any(svc["spec"]["selector"].items() <= lab.items() for lab in other)


# --- generated from one source --------------------------------------------------------------------


def test_dashboard_configmap_is_the_dashboard_file(rendered):
    overlay, docs = rendered
    (cm,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", (
        "the label Grafana's dashboard sidecar looks for"
    )
    assert cm["metadata"]["name"] == "dihs-dashboard", "no hash suffix: the sidecar would load old copies too"
    (text,) = cm["data"].values()
    assert text == (DEPLOY / "grafana" / "dashboard.json").read_text()
    copies = [
        p
        for p in DEPLOY.rglob("*")
        if p.is_file()
        and p.name != "dashboard.json"
        and '"uid": "dihs-serve"' in p.read_text(errors="ignore")
    ]
    assert not copies, f"a second copy of the dashboard: {copies}"
    assert json.loads(text)["uid"] == "dihs-serve"


def test_prometheusrule_is_alerts_yml(rendered):
    overlay, docs = rendered
    rule = one(docs, "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_prometheusrule_file_is_generated():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
