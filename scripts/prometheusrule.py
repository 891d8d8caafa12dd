"""Write deploy/k8s/common/prometheusrule.yaml: deploy/prometheus/alerts.yml's groups as a Prometheus
Operator PrometheusRule. alerts.yml is the one source (promtool checks and unit-tests it);
tests/test_manifests.py fails when the PrometheusRule differs from what this writes.

    python scripts/prometheusrule.py           # rewrite the file
    python scripts/prometheusrule.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE = ROOT / "deploy" / "k8s" / "common" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by scripts/prometheusrule.py: edit alerts.yml, then run
# `python scripts/prometheusrule.py` (tests/test_manifests.py checks the two agree).
# The label `release: prometheus` is what kube-prometheus-stack's ruleSelector matches by default.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, s: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "dihs", "labels": {"release": "prometheus"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if RULE.read_text() != text:
            print(f"{RULE.relative_to(ROOT)} is stale: run python scripts/prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    RULE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
