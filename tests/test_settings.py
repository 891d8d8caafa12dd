"""service.settings: DIHS_* environment variables and arguments, value checks, the API key from a file,
and the derived capacity and Serve limits (test_hardening covers the key file's basics)."""

import re

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No DIHS_* variable of the machine running the tests leaks into these settings."""
    import os

    for k in list(os.environ):
        if k.startswith("DIHS_"):
            monkeypatch.delenv(k)


def test_environment_variables_with_the_prefix_are_read_and_typed(monkeypatch):
    monkeypatch.setenv("DIHS_PORT", "9001")
    monkeypatch.setenv("DIHS_GC_FREEZE", "false")
    monkeypatch.setenv("DIHS_SLO_MS", "120.5")
    monkeypatch.setenv("DIHS_UPGRADE_BUNDLE", "bundles/next")
    s = Settings()
    assert s.port == 9001 and s.gc_freeze is False and s.upgrade_bundle == "bundles/next"
    assert s.slo_ms == pytest.approx(120.5)
    assert Settings(port=9002).port == 9002  # an argument wins over the environment


def test_an_unknown_argument_is_refused():
    with pytest.raises(ValidationError, match="max_batch"):
        Settings(max_batch=4)


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.port = 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("port", 0),
        ("port", 65536),
        ("model_name", "has space"),
        ("model_name", "x" * 65),
        ("model_name", ""),
        ("ingress", "nginx"),
        ("device", "cuda:"),
        ("device", "gpu"),
        ("dtype", "float16"),
        ("max_batch_size", 257),
        ("replicas", 0),
        ("slo_ms", 0),
        ("shadow_share", 0.6),
        ("max_accuracy_loss", 1.5),
        ("replica_cpus", 0),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as e:
        Settings(**{field: value})
    assert [err["loc"] for err in e.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    "field, value",
    [
        ("device", "cuda:3"),
        ("device", "cpu"),
        ("model_name", "my-model_v1.2"),
        ("dtype", "int8"),
        ("port", 1),
    ],
)
def test_values_in_range_are_kept(field, value):
    assert getattr(Settings(**{field: value}), field) == value


def test_the_key_file_gives_its_first_line_stripped(tmp_path):
    f = tmp_path / "key"
    f.write_text("\n  s3cret  \nsecond line\n")
    assert Settings(api_key_file=str(f)).api_key.get_secret_value() == "s3cret"


def test_an_explicit_key_wins_over_the_key_file(tmp_path):
    f = tmp_path / "key"
    f.write_text("from-file\n")
    assert Settings(api_key="direct", api_key_file=str(f)).api_key.get_secret_value() == "direct"


@pytest.mark.parametrize("content", ["", "\n\n", "   \n"])
def test_an_empty_key_file_is_refused(tmp_path, content):
    f = tmp_path / "key"
    f.write_text(content)
    with pytest.raises(ValidationError, match=re.escape(f"api_key_file {f} is empty")):
        Settings(api_key_file=str(f))


def test_the_key_never_shows_in_what_replicas_are_handed_or_in_repr():
    s = Settings(api_key="topsecret", port=8123)
    shared = s.shareable()
    assert "api_key" not in shared and shared["port"] == 8123
    assert "topsecret" not in repr(s) and "topsecret" not in str(shared)
    assert Settings(**shared).port == 8123  # replicas rebuild their settings from it


@pytest.mark.parametrize(
    "ongoing, queued, capacity, limit", [(128, 256, 384, 1536), (10, 5, 15, 1024), (200, 100, 300, 1200)]
)
def test_capacity_and_serves_own_limit(ongoing, queued, capacity, limit):
    s = Settings(max_ongoing_requests=ongoing, max_queued_requests=queued)
    assert s.replica_capacity == capacity and s.serve_limit == limit


@pytest.mark.parametrize("key", ["", "  "])
def test_an_empty_api_key_is_refused(tmp_path, key):
    """An empty key would turn authentication on and let an empty bearer token in."""
    with pytest.raises(ValidationError, match="api_key is empty"):
        Settings(api_key=key)
    f = tmp_path / "key"
    f.write_text("from-file")
    with pytest.raises(ValidationError, match="api_key is empty"):
        Settings(api_key=key, api_key_file=str(f))  # not silently ignored in favour of the file either
