"""The installed package's version: what /v2, the OpenAPI page and dihs_build_info report."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("dihs-serve")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
