"""fleetgate.lean_imports: prometheus_client without its HTTP servers and push client,
importlib.metadata without zipfile, email... and logging.config without its handlers, until
something asks them for more; then each whole, as its authors wrote it (issue 11: idle
memory)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetgate.lean_imports import declares_no_entry_points, entry_points

# In a child process: the test process has imported prometheus_client whole already.
CHILD = """
import json, sys
import fleetgate
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
import prometheus_client

HEAVY = ("prometheus_client.exposition", "http.server", "wsgiref", "urllib.request", "gzip",
         "prometheus_client.process_collector")
out = {"before": sorted(n for n in HEAVY if n in sys.modules)}
import prometheus_client.metrics as m
out["same"] = [Counter is m.Counter, Gauge is m.Gauge, Histogram is m.Histogram]
registry = CollectorRegistry()
Counter("c", "a counter", registry=registry).inc()
# A name the package's own __init__ sets: it runs now.
start = prometheus_client.start_http_server
out["after"] = sorted(n for n in HEAVY if n in sys.modules)
out["text"] = prometheus_client.generate_latest(registry).decode()
out["process"] = any(
    s.name.startswith("process_") for f in prometheus_client.REGISTRY.collect()
    for s in f.samples
)
from prometheus_client import multiprocess
out["multiprocess"] = multiprocess.__name__
out["same"] += [prometheus_client.Counter is m.Counter, callable(start)]
try:
    prometheus_client.no_such_name
    out["missing"] = False
except AttributeError:
    out["missing"] = True
print(json.dumps(out))
"""


def run_child(code: str, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_lean_until_asked_then_whole() -> None:
    result = run_child(CHILD)
    assert result["before"] == []
    assert result["after"] == [
        "gzip", "http.server", "prometheus_client.exposition",
        "prometheus_client.process_collector", "urllib.request", "wsgiref",
    ]
    assert all(result["same"])  # type: ignore[arg-type]
    assert "c_total 1.0" in result["text"]  # type: ignore[operator]
    assert result["process"] is True
    assert result["multiprocess"] == "prometheus_client.multiprocess"
    assert result["missing"] is True


def test_imported_before_fleetgate_it_stays_as_it_is() -> None:
    code = (
        "import sys, json, prometheus_client, fleetgate\n"
        "print(json.dumps({'exposition': 'prometheus_client.exposition' in sys.modules,"
        " 'finder': type(sys.modules['prometheus_client'].__spec__.loader).__name__}))"
    )
    assert run_child(code) == {"exposition": True, "finder": "SourceFileLoader"}


# What importlib.metadata's own __init__ imports (and nothing else an idle server loads).
METADATA_HEAVY = ("zipfile", "csv", "email.message", "importlib.resources", "tempfile")

METADATA_CHILD = """
import json, sys
import fleetgate
import websockets.version
from pydantic import BaseModel
import pydantic.plugin._loader as plugin_loader

HEAVY = json.loads(sys.argv[1])


class Model(BaseModel):
    x: int


out = {"before": sorted(n for n in HEAVY if n in sys.modules)}
out["plugins"] = list(plugin_loader.get_plugins())
out["valid"] = Model(x=1).x == 1
import importlib.metadata
lean = sys.modules["importlib.metadata"]
# A name importlib.metadata's own __init__ sets: it runs now, in the same module object.
out["version"] = importlib.metadata.version("pydantic")
from importlib.metadata import distributions
out["after"] = sorted(n for n in HEAVY if n in sys.modules)
out["same"] = [
    sys.modules["importlib.metadata"] is lean,
    websockets.version.importlib.metadata is lean,
    importlib.metadata.distributions is distributions,
]
out["entry_points"] = type(importlib.metadata.entry_points(group="console_scripts")).__name__
print(json.dumps(out))
"""


def test_importlib_metadata_lean_until_asked_then_whole() -> None:
    import pydantic

    result = run_child(METADATA_CHILD, json.dumps(METADATA_HEAVY))
    # A model built, websockets imported: none of importlib.metadata's own imports yet.
    assert result["before"] == []
    assert result["plugins"] == [] and result["valid"] is True
    assert result["version"] == pydantic.VERSION
    assert result["after"] == sorted(METADATA_HEAVY)
    assert all(result["same"])  # type: ignore[arg-type]
    assert result["entry_points"] == "EntryPoints"


PLUGIN = """
calls = []


class Plugin:
    def new_schema_validator(self, schema, schema_type, schema_type_path, schema_kind,
                             config, plugin_settings):
        calls.append(schema_type.__name__)
        return None, None, None


plugin = Plugin()
"""


def test_a_pydantic_plugin_is_still_found(tmp_path: Path) -> None:
    (tmp_path / "fg_test_plugin.py").write_text(PLUGIN)
    info = tmp_path / "fg_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fg-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nfg_test = fg_test_plugin:plugin\n")
    code = (
        "import json, sys, fleetgate\n"
        "from pydantic import BaseModel\n"
        "class Model(BaseModel):\n    x: int\n"
        "import fg_test_plugin\n"
        "print(json.dumps({'calls': fg_test_plugin.calls,"
        " 'metadata': 'importlib.metadata._adapters' in sys.modules}))"
    )
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
        env=env,
    ).stdout
    # The plugin saw the model built, through importlib.metadata's own entry points.
    assert json.loads(out) == {"calls": ["Model"], "metadata": True}


def distribution(path: Path, name: str, entry_points: str | None) -> None:
    info = path / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def test_declares_no_entry_points_only_when_none_can_be_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    distribution(site, "quiet", None)
    distribution(site, "scripts", "[console_scripts]\nrun = scripts:main\n")
    (site / "legacy.egg-info").write_text("Metadata-Version: 1.0\nName: legacy\n")  # a file
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "missing")])
    assert declares_no_entry_points("pydantic")
    assert entry_points(group="pydantic") == ()
    assert not declares_no_entry_points("console_scripts")
    assert [e.name for e in entry_points(group="console_scripts")] == ["run"]
    # Any other group is importlib.metadata's answer, whatever is installed.
    assert entry_points(group="no.such.group").names == set()

    # Where importlib.metadata would look further than dist-info folders: left to it.
    other = tmp_path / "other"
    other.mkdir()
    for entry in ("x.egg", "lib.zip"):
        (other / entry).write_bytes(b"")
        monkeypatch.setattr(sys, "path", [str(site), str(other / entry)])
        assert not declares_no_entry_points("pydantic")


def test_entry_points_answers_as_importlib_metadata() -> None:
    import importlib.metadata

    for group in ("pydantic", "console_scripts", "no.such.group"):
        ours = entry_points(group=group)
        theirs = importlib.metadata.entry_points(group=group)
        assert [(e.name, e.value) for e in ours] == [(e.name, e.value) for e in theirs]
    assert declares_no_entry_points("no.such.group")


LOGGING_CONFIG_CHILD = """
import json, logging, sys
import fleetgate
from fleetgate.api.uvicorn_core import uvicorn_classes

uvicorn_classes()
HEAVY = ("logging.handlers", "socketserver", "pickle")
out = {"before": sorted(n for n in HEAVY if n in sys.modules)}
logging.config.dictConfig({"version": 1, "loggers": {"x": {"level": "WARNING"}}})
out["level"] = logging.getLogger("x").level
out["after"] = sorted(n for n in HEAVY if n in sys.modules)
out["file_config"] = callable(logging.config.fileConfig)
print(json.dumps(out))
"""


def test_logging_config_lean_until_used() -> None:
    result = run_child(LOGGING_CONFIG_CHILD)
    assert result == {
        "before": [],
        "level": logging.WARNING,
        "after": ["logging.handlers", "pickle", "socketserver"],
        "file_config": True,
    }


COMPRESSION_CHILD = """
import argparse, json, sys
import fleetgate
from fleetgate import lean_imports

if len(sys.argv) > 1:  # as where the extension module is missing
    lean_imports.NEEDS = {"bz2": "_no_such_extension"}
argparse.ArgumentParser().add_argument("--x")  # its help formatter imports shutil
import shutil

HEAVY = ("_bz2", "_lzma", "_compression")
out = {"before": sorted(n for n in HEAVY if n in sys.modules)}
out["supported"] = [shutil._BZ2_SUPPORTED, shutil._LZMA_SUPPORTED]
import bz2, lzma
out["round_trip"] = [bz2.decompress(bz2.compress(b"abc")) == b"abc",
                     lzma.decompress(lzma.compress(b"abc")) == b"abc"]
out["after"] = sorted(n for n in HEAVY if n in sys.modules)
print(json.dumps(out))
"""


def test_bz2_and_lzma_lean_until_used() -> None:
    result = run_child(COMPRESSION_CHILD)
    assert result == {
        "before": [],
        "supported": [True, True],
        "round_trip": [True, True],
        "after": ["_bz2", "_compression", "_lzma"],
    }
    # Without its extension module a package is imported as it is (here: at once).
    assert run_child(COMPRESSION_CHILD, "missing")["before"] == ["_bz2", "_compression"]
