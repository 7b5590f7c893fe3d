"""``MonitoringConfig``: defaults, ``ROCKSTAR_<FIELD>`` overrides, validation, and a secret-free repr."""
from __future__ import annotations

import dataclasses
import os

import pytest

from rockstar_mp.config import MonitoringConfig

BOOL_FIELDS = ["enable_metrics", "require_auth", "enable_pprof", "enable_snmp", "enable_optimization"]


def env_name(field: str) -> str:
    return "ROCKSTAR_" + field.upper()


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "tRuE", "yes", "On", " true "])
@pytest.mark.parametrize("field", ["enable_pprof", "enable_snmp", "enable_optimization"])
def test_boolean_env_true(field, raw):
    config = MonitoringConfig().with_env({env_name(field): raw})
    assert getattr(config, field) is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "False", "no", "OFF", ""])
@pytest.mark.parametrize("field", ["enable_metrics", "enable_pprof"])
def test_boolean_env_false(field, raw):
    config = MonitoringConfig(enable_metrics=True, enable_pprof=True).with_env({env_name(field): raw})
    assert getattr(config, field) is False


@pytest.mark.parametrize("raw", ["2", "maybe", "tru", "yes please", "1.0", "-1", "none"])
@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_boolean_env_garbage_names_the_variable(field, raw):
    with pytest.raises(ValueError) as info:
        MonitoringConfig(auth_token="t").with_env({env_name(field): raw})
    message = str(info.value)
    assert f"ROCKSTAR_{field.upper()}" in message
    assert repr(raw) in message


def test_require_auth_from_env_with_token_from_env():
    config = MonitoringConfig().with_env({"ROCKSTAR_REQUIRE_AUTH": "True",
                                          "ROCKSTAR_AUTH_TOKEN": "s3cret"})
    assert config.require_auth is True
    assert config.auth_token == "s3cret"


def test_int_and_float_env():
    config = MonitoringConfig().with_env({
        "ROCKSTAR_METRICS_PORT": "9191", "ROCKSTAR_PPROF_PORT": " 6061 ", "ROCKSTAR_MAX_WORKERS": "7",
        "ROCKSTAR_SLAB_MAX_SERIES": "128", "ROCKSTAR_OPTIMIZATION_INTERVAL": "2.5",
        "ROCKSTAR_SNAPSHOT_MAX_AGE": "0.05", "ROCKSTAR_TICK_INTERVAL": "1e-1"})
    assert config.metrics_port == 9191 and type(config.metrics_port) is int
    assert config.pprof_port == 6061
    assert config.max_workers == 7
    assert config.slab_max_series == 128
    assert config.optimization_interval == 2.5 and type(config.optimization_interval) is float
    assert config.snapshot_max_age == 0.05
    assert config.tick_interval == 0.1
    # a float field takes an integer literal too
    assert MonitoringConfig().with_env({"ROCKSTAR_OPTIMIZATION_INTERVAL": "60"}).optimization_interval == 60.0


@pytest.mark.parametrize("name, raw", [
    ("ROCKSTAR_METRICS_PORT", "http"),
    ("ROCKSTAR_METRICS_PORT", "91.5"),
    ("ROCKSTAR_MAX_WORKERS", ""),
    ("ROCKSTAR_SNMP_PORT", "0x10"),
    ("ROCKSTAR_OPTIMIZATION_INTERVAL", "five"),
    ("ROCKSTAR_TICK_INTERVAL", ""),
])
def test_number_env_garbage_names_the_variable(name, raw):
    with pytest.raises(ValueError) as info:
        MonitoringConfig().with_env({name: raw})
    assert name in str(info.value)
    assert repr(raw) in str(info.value)


def test_env_values_are_validated_like_code_values():
    with pytest.raises(ValueError, match="metrics_port must be 0..65535"):
        MonitoringConfig().with_env({"ROCKSTAR_METRICS_PORT": "70000"})
    with pytest.raises(ValueError, match="max_workers"):
        MonitoringConfig().with_env({"ROCKSTAR_MAX_WORKERS": "0"})
    with pytest.raises(ValueError, match="optimization_interval"):
        MonitoringConfig().with_env({"ROCKSTAR_OPTIMIZATION_INTERVAL": "0"})
    with pytest.raises(ValueError, match="metrics_path"):
        MonitoringConfig().with_env({"ROCKSTAR_METRICS_PATH": "metrics"})


def test_segment_dir_and_run_dir_env():
    config = MonitoringConfig().with_env({"ROCKSTAR_SEGMENT_DIR": "/tmp/shm-test",
                                          "ROCKSTAR_RUN_DIR": "/run/rockstar"})
    assert config.segment_dir == "/tmp/shm-test"
    assert config.run_dir == "/run/rockstar"
    assert MonitoringConfig().run_dir is None
    # an empty optional string means "not set"
    assert MonitoringConfig(run_dir="/x").with_env({"ROCKSTAR_RUN_DIR": ""}).run_dir is None
    assert MonitoringConfig().with_env({"ROCKSTAR_HOST": "0.0.0.0"}).host == "0.0.0.0"


def test_precedence_env_over_code_over_default(monkeypatch):
    assert MonitoringConfig().metrics_port == 9090
    in_code = MonitoringConfig(metrics_port=9191, segment_dir="/code")
    assert in_code.with_env({}).metrics_port == 9191
    assert in_code.with_env({}) is in_code  # nothing to apply: the same object
    overridden = in_code.with_env({"ROCKSTAR_METRICS_PORT": "9292"})
    assert overridden.metrics_port == 9292
    assert overridden.segment_dir == "/code"  # untouched fields keep the code's value
    assert in_code.metrics_port == 9191  # frozen: with_env returns a copy
    # by default, the process environment
    for name in [n for n in os.environ if n.startswith("ROCKSTAR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ROCKSTAR_METRICS_PORT", "9393")
    monkeypatch.setenv("ROCKSTAR_ENABLE_PPROF", "yes")
    config = in_code.with_env()
    assert (config.metrics_port, config.enable_pprof) == (9393, True)


def test_unknown_and_unprefixed_variables_are_ignored():
    config = MonitoringConfig().with_env({"ROCKSTAR_NO_SUCH_FIELD": "1", "METRICS_PORT": "1",
                                          "rockstar_metrics_port": "1"})
    assert config == MonitoringConfig()


@pytest.mark.parametrize("field", ["metrics_path", "pprof_path"])
@pytest.mark.parametrize("value", ["metrics", "", "debug/pprof", "/metrics/", "//"])
def test_paths_must_start_with_a_slash_and_not_end_with_one(field, value):
    with pytest.raises(ValueError, match=f"{field} must start with '/'"):
        MonitoringConfig(**{field: value})


@pytest.mark.parametrize("value", ["/", "/metrics", "/a/b"])
def test_good_paths(value):
    assert MonitoringConfig(metrics_path=value).metrics_path == value


@pytest.mark.parametrize("token", [None, ""])
def test_require_auth_needs_a_token(token):
    with pytest.raises(ValueError, match="require_auth needs auth_token"):
        MonitoringConfig(require_auth=True, auth_token=token)
    with pytest.raises(ValueError, match="require_auth needs auth_token"):
        MonitoringConfig().with_env({"ROCKSTAR_REQUIRE_AUTH": "1"})
    with pytest.raises(ValueError, match="require_auth needs auth_token"):
        MonitoringConfig(auth_token="t").with_env({"ROCKSTAR_REQUIRE_AUTH": "1",
                                                  "ROCKSTAR_AUTH_TOKEN": ""})


def test_repr_never_shows_the_token():
    secret = "s3cret-Tok3n"
    for config in (MonitoringConfig(require_auth=True, auth_token=secret),
                   MonitoringConfig(auth_token=secret),
                   MonitoringConfig().with_env({"ROCKSTAR_REQUIRE_AUTH": "1",
                                                "ROCKSTAR_AUTH_TOKEN": secret})):
        for text in (repr(config), str(config), f"{config}", f"{config!r}", repr([config])):
            assert secret not in text
            assert "auth_token='***'" in text
    assert "auth_token=None" in repr(MonitoringConfig())
    # every other field is shown
    shown = repr(MonitoringConfig(metrics_port=9191))
    for field in dataclasses.fields(MonitoringConfig):
        assert f"{field.name}=" in shown
    assert "metrics_port=9191" in shown


def test_json_round_trip_keeps_every_field():
    config = MonitoringConfig(metrics_port=9191, require_auth=True, auth_token="t", run_dir="/r",
                              optimization_interval=1.5)
    assert MonitoringConfig.from_json(config.to_json()) == config


def test_intervals_below_a_millisecond_are_refused():
    """5e-324 s was accepted and overflowed the optimization schedule (a traceback every tick)."""
    for value in (5e-324, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="optimization_interval"):
            MonitoringConfig(optimization_interval=value)
    assert MonitoringConfig(optimization_interval=0.001).optimization_interval == 0.001
