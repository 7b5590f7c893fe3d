"""One error hierarchy: every exception class rockstar-mp defines is a ``RockstarError``, and every
public one is exported from the package root."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

import rockstar_mp
from rockstar_mp import errors
from tests.helpers import ROOT

# A fresh interpreter imports every module of the package (importing them all here would declare every
# role's metrics in this test process) and lists the exception classes not under RockstarError. A
# ``__main__`` module that defines no class is not imported: ``rockstar_mp.cli.__main__`` runs the CLI
# when imported (``python -m rockstar_mp.cli``).
WALK = """
import ast, importlib, importlib.util, inspect, json, pkgutil
import rockstar_mp
from rockstar_mp.errors import RockstarError

def defines_classes(name):
    source = open(importlib.util.find_spec(name).origin).read()
    return any(isinstance(node, ast.ClassDef) for node in ast.walk(ast.parse(source)))

seen, strays = [], []
for info in pkgutil.walk_packages(rockstar_mp.__path__, "rockstar_mp."):
    if info.name.endswith(".__main__") and not defines_classes(info.name):
        continue
    module = importlib.import_module(info.name)
    for name, cls in vars(module).items():
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == info.name:
            seen.append(f"{info.name}.{name}")
            if not issubclass(cls, RockstarError):
                strays.append(f"{info.name}.{name}")
print(json.dumps({"seen": seen, "strays": strays}))
"""


def test_every_exception_class_of_the_package_is_a_rockstar_error() -> None:
    # the Django integration imports Django, which reads its settings when imported: the example's
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "examples.django_site.settings"}
    done = subprocess.run([sys.executable, "-c", WALK], capture_output=True, text=True, timeout=120, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert "rockstar_mp.errors.NoSegment" in found["seen"]  # the walk did reach the modules
    assert "rockstar_mp.aggregator.snmp.usm.Refused" in found["seen"]
    assert found["strays"] == []


def test_every_public_error_is_exported_from_the_root() -> None:
    defined = {name for name, cls in vars(errors).items()
               if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__}
    assert defined == set(errors.__all__)
    for name in defined:
        assert name in rockstar_mp.__all__
        assert getattr(rockstar_mp, name) is getattr(errors, name)


def test_the_old_import_paths_name_the_same_classes() -> None:
    from rockstar_mp.cli.client import FetchError
    from rockstar_mp.profiling.channel import WorkerUnavailable
    from rockstar_mp.profiling.fetch import ProfileFetchError
    from rockstar_mp.safefs import UnsafePath
    from rockstar_mp.segment import RockstarError
    from rockstar_mp.segment.errors import MetricNameConflict
    assert (FetchError, WorkerUnavailable, ProfileFetchError, UnsafePath, RockstarError, MetricNameConflict) == (
        errors.FetchError, errors.WorkerUnavailable, errors.ProfileFetchError, errors.UnsafePath,
        errors.RockstarError, errors.MetricNameConflict)


def test_attach_worker_without_a_segment_raises_no_segment_still_a_runtime_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROCKSTAR_SEGMENT", raising=False)
    code = ("import os; os.environ.pop('ROCKSTAR_SEGMENT', None)\n"
            "from rockstar_mp import attach_worker, NoSegment, RockstarError\n"
            "try:\n    attach_worker()\n"
            "except NoSegment as exc:\n    print(isinstance(exc, RuntimeError), isinstance(exc, RockstarError))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True"]
