"""``ROCKSTAR_<FIELD>`` overrides are parsed by the field's real type (``typing.get_type_hints``), for every
field of ``MonitoringConfig`` and of a subclass that adds fields."""
from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from rockstar_mp.config import MonitoringConfig


def env_form(value: object) -> str:
    """How a deployment writes ``value`` in the environment."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(MonitoringConfig)])
def test_every_field_takes_its_default_back_from_the_environment(field):
    default = getattr(MonitoringConfig(), field)
    parsed = getattr(MonitoringConfig().with_env({"ROCKSTAR_" + field.upper(): env_form(default)}), field)
    assert parsed == default and type(parsed) is type(default)


def test_the_str_or_list_settings_take_their_string_form():
    config = MonitoringConfig().with_env({"ROCKSTAR_SNMP_USERS": "ops:SHA:12345678:AES:abcdefgh",
                                          "ROCKSTAR_SNMP_TRAP_TARGETS": "v3:ops@127.0.0.1:162/inform"})
    assert config.snmp_users == "ops:SHA:12345678:AES:abcdefgh"
    assert config.snmp_trap_targets == "v3:ops@127.0.0.1:162/inform"


@dataclasses.dataclass(frozen=True)
class WithExtras(MonitoringConfig):
    team: Optional[str] = "web"
    shards: int = 1


def test_a_subclass_parses_its_own_fields_by_their_types():
    config = WithExtras().with_env({"ROCKSTAR_TEAM": "", "ROCKSTAR_SHARDS": "4", "ROCKSTAR_METRICS_PORT": "9191"})
    assert (config.team, config.shards, config.metrics_port) == (None, 4, 9191)
    with pytest.raises(ValueError, match=r"\$ROCKSTAR_SHARDS='four': invalid literal"):
        WithExtras().with_env({"ROCKSTAR_SHARDS": "four"})


@dataclasses.dataclass(frozen=True)
class WithAListOfNumbers(MonitoringConfig):
    ports: tuple[int, ...] = ()


def test_a_field_of_a_type_without_a_parser_is_refused_not_passed_through_as_a_string():
    with pytest.raises(TypeError, match="ports"):
        WithAListOfNumbers().with_env({"ROCKSTAR_PORTS": "1,2"})
