"""deploy/k8s for the tests: overlays rendered with kustomize, CRD schemas as strict JSON Schemas,
the KServe models walk, and Pod Security "restricted" as a function.

CRDs are read from $DIHS_CRDS_DIR, else ../shared/crds beside the repository (they stay outside the
project; README there says where each comes from).
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = tuple(sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml")))
K8S_VERSION = "1.32.0"  # a version kubernetes-validate ships schemas for (and kubectl's here)
CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


# --- kustomize ------------------------------------------------------------------------------------


def kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def _rendered(overlay: str) -> str:
    out = subprocess.run(
        [*kustomize_cmd(), str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(overlay: str) -> list[dict]:
    """Every object `kubectl kustomize deploy/k8s/overlays/OVERLAY` renders (a skip without kustomize)."""
    if kustomize_cmd() is None:
        pytest.skip(
            "neither kustomize nor kubectl is installed: overlays checked by test_kustomizations_resolve only"
        )
    return [d for d in yaml.safe_load_all(_rendered(overlay)) if d]


# --- CRD schemas ----------------------------------------------------------------------------------


def crds_dir() -> Path:
    """The CRD folder, or a skip saying where it was looked for."""
    env = os.environ.get("DIHS_CRDS_DIR")
    path = Path(env) if env else ROOT.parent / "shared" / "crds"
    if not all((path / f).is_file() for f in CRD_FILES.values()):
        pytest.skip(
            f"no CRDs at {path} ({'DIHS_CRDS_DIR' if env else 'set DIHS_CRDS_DIR, or ../shared/crds'}): "
            f"needs {', '.join(CRD_FILES.values())}"
        )
    return path


def structural(schema: dict, root: bool = True) -> dict:
    """An openAPIV3Schema as the API server applies it, for jsonschema: an object field that is not in
    `properties` (nor allowed by `additionalProperties`) is refused instead of silently pruned, unless
    the schema preserves unknown fields; `nullable` admits null; embedded resources admit
    apiVersion/kind/metadata. x-kubernetes-* keys are annotations to jsonschema (CEL rules are not run)."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    for key in ("properties", "patternProperties"):
        if key in s:
            s[key] = {name: structural(sub, root=False) for name, sub in s[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(s.get(key), dict):
            s[key] = structural(s[key], root=False)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [structural(sub, root=False) for sub in s[key]]
    if schema.get("x-kubernetes-embedded-resource"):
        s.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
        )
    if (
        schema.get("type") == "object"
        and "additionalProperties" not in s
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        s["additionalProperties"] = False
    if root:  # the API server checks metadata itself (checked here as a core ObjectMeta)
        s["properties"]["metadata"] = {"type": "object"}
    if schema.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    return s


@functools.cache
def _validator(kind: str, version: str):
    import jsonschema

    crd = yaml.safe_load((crds_dir() / CRD_FILES[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return jsonschema.Draft7Validator(structural(v["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict) -> list[str]:
    """What the CRD of doc's kind refuses in it (empty: valid), and what a core ObjectMeta refuses in its
    metadata."""
    group_version = doc["apiVersion"]
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in _validator(doc["kind"], group_version.split("/")[-1]).iter_errors(doc)
    ]
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    try:
        validate_core(meta)
    except Exception as e:
        errors.append(f"metadata: {str(e).splitlines()[0]}")
    return errors


def validate_core(obj: dict) -> None:
    """A core Kubernetes object against the API's schema, unknown fields refused (kubernetes-validate
    --strict)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- KServe ---------------------------------------------------------------------------------------


def kserve_errors(data, type_name: str = "V1beta1InferenceService", where: str = "") -> list[str]:
    """Walk data along the kserve SDK's generated models (and the kubernetes client's, for the pod
    fields they reference): every key must be an attribute of its model, every value of its type."""
    import kserve.models as ks
    import kubernetes.client.models as k8s

    if type_name.lower().startswith("list["):  # the SDKs write list[X] or List[X]
        if not isinstance(data, list):
            return [f"{where}: a list expected"]
        return [e for i, v in enumerate(data) for e in kserve_errors(v, type_name[5:-1], f"{where}[{i}]")]
    if type_name.lower().startswith(("dict(", "dict[")):  # dict(str, X) or Dict[str, X]
        if not isinstance(data, dict):
            return [f"{where}: a mapping expected"]
        value_type = type_name[5:-1].split(",", 1)[1].strip()
        return [e for k, v in data.items() for e in kserve_errors(v, value_type, f"{where}.{k}")]
    primitive = {
        "str": str,
        "int": int,
        "bool": bool,
        "float": (int, float),
        "ResourceQuantity": (str, int, float),
    }
    if type_name in primitive:
        ok = isinstance(data, primitive[type_name]) and not (type_name == "int" and isinstance(data, bool))
        return [] if ok else [f"{where}: {type(data).__name__} is not {type_name}"]
    if type_name == "object":
        return []
    model = getattr(ks, type_name, None) or getattr(k8s, type_name)
    if not isinstance(data, dict):
        return [f"{where}: a {type_name} mapping expected"]
    by_key = {key: attr for attr, key in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in by_key:
            errors.append(f"{where}.{key}: no such field in {type_name}")
        else:
            errors += kserve_errors(value, model.openapi_types[by_key[key]], f"{where}.{key}")
    return errors


# --- Pods -----------------------------------------------------------------------------------------


def ray_groups(rayservice: dict) -> list[tuple[str, dict]]:
    """(name, group spec) of the head group and every worker group."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = [("head", cluster["headGroupSpec"])] if "headGroupSpec" in cluster else []  # a patch may have none
    return head + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]


KSERVE_ONLY = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleMetricType",
    "scaleTarget",
    "labels",
    "annotations",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "deploymentStrategy",
    "autoScaling",
    "storageUris",
    "model",
    "workerSpec",
}


def pods(docs: list[dict]) -> list[tuple[str, dict]]:
    """(what, Pod) for every Pod the objects make: each RayService group's (the head's with the
    autoscaler sidecar KubeRay adds, as autoscalerOptions configures it), and KServe's predictor."""
    out = []
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            for group, g in ray_groups(d):
                t = copy.deepcopy(g["template"])
                if group == "head" and cluster.get("enableInTreeAutoscaling"):
                    opts = cluster.get("autoscalerOptions", {})
                    sidecar = {
                        "name": "autoscaler",
                        "image": t["spec"]["containers"][0]["image"],
                        **{
                            k: opts[k]
                            for k in ("resources", "securityContext", "env", "envFrom", "volumeMounts")
                            if k in opts
                        },
                    }
                    t["spec"]["containers"].append(sidecar)
                meta = {**t.get("metadata", {}), "name": f"{name}-{group}"}
                out.append(
                    (
                        f"RayService {name} {group} group",
                        {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]},
                    )
                )
        elif d["kind"] == "InferenceService":
            p = d["spec"]["predictor"]
            spec = {k: v for k, v in p.items() if k not in KSERVE_ONLY}
            meta = {"name": f"{name}-predictor", "labels": p.get("labels", {})}
            out.append(
                (
                    f"InferenceService {name} predictor",
                    {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec},
                )
            )
    return out


RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: dict) -> list[str]:
    """What a Pod spec breaks of the Pod Security Standard "restricted" (Kubernetes 1.32 policy,
    baseline included): host namespaces, privileged, capabilities, hostPath and other volume types,
    host ports, AppArmor, SELinux, /proc mount, seccomp, sysctls, privilege escalation, non-root."""
    bad = []
    pod_sc = spec.get("securityContext", {})
    for ns in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(ns):
            bad.append(f"{ns} is true")
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {v['name']}: {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    if pod_sc.get("sysctls"):
        bad.append("sysctls set")
    if pod_sc.get("seLinuxOptions", {}).get("type") not in (
        None,
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ):
        bad.append("pod seLinuxOptions.type")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    for key in ("seccompProfile", "appArmorProfile"):
        if pod_sc.get(key, {}).get("type") == "Unconfined":
            bad.append(f"pod {key} Unconfined")
    containers = spec.get("initContainers", []) + spec["containers"] + spec.get("ephemeralContainers", [])
    for c in containers:
        sc, who = c.get("securityContext", {}), f"container {c['name']}"
        if sc.get("privileged"):
            bad.append(f"{who}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{who}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{who}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{who}: adds capabilities {caps['add']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{who}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{who}: procMount")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{who}: runs as uid 0")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            bad.append(f"{who}: runAsNonRoot is not true (container or Pod)")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(
                f"{who}: seccompProfile is {seccomp} (RuntimeDefault or Localhost needed, container or Pod)"
            )
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            bad.append(f"{who}: appArmorProfile Unconfined")
    return bad
