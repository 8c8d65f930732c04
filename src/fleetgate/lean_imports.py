"""prometheus_client, importlib.metadata, logging.config, bz2 and lzma without what a server
does not use of them (issue 11).

``import prometheus_client`` runs a package ``__init__`` that imports its HTTP servers, push
gateway client, WSGI/ASGI apps and default collectors (http.server, urllib.request,
wsgiref, gzip...): about 1.5 MiB of an idle server's memory, for a server that only defines
metrics and renders them (:mod:`fleetgate.observability.exposition`).

:func:`install` (run by ``fleetgate/__init__``) puts a finder first on ``sys.meta_path``
that answers for the package alone, and only while it is not imported yet. The package it
imports holds the names below, taken from the modules that define them; the first time
anyone asks it for another name (``start_http_server``, ``REGISTRY``, ``generate_latest``,
``multiprocess``...), it runs the package's own ``__init__`` then, so everything is there as
prometheus_client wrote it. Only the order changes: the default registry's process and
platform collectors are registered when the ``__init__`` runs.

:mod:`importlib.metadata` likewise: it imports zipfile, csv, email.message,
importlib.resources, tempfile... (about 2 MiB) for ``websockets.version``, which uses it only
in a development checkout, and for pydantic's plugin loader, which takes ``entry_points``
from it to look up the ``pydantic`` entry points once, when the first model is built. The
lean package holds :func:`entry_points`, which answers for that group when no installed
distribution can declare it (:func:`declares_no_entry_points`) and asks
:mod:`importlib.metadata`'s own otherwise.
And :mod:`logging.config` (with logging.handlers and socketserver, ~0.4 MiB), which
``uvicorn.config`` imports for a ``log_config`` the API server is never given; :mod:`bz2`
and :mod:`lzma` (their libraries, ~0.3 MiB), which :mod:`shutil` imports to know whether
they are there.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from importlib.abc import Loader
    from types import ModuleType

# Module or package -> the names set before its own code runs, and the module defining each.
LEAN: Mapping[str, Mapping[str, str]] = {
    "prometheus_client": {
        "CollectorRegistry": "prometheus_client.registry",
        "Counter": "prometheus_client.metrics",
        "Enum": "prometheus_client.metrics",
        "Gauge": "prometheus_client.metrics",
        "Histogram": "prometheus_client.metrics",
        "Info": "prometheus_client.metrics",
        "Summary": "prometheus_client.metrics",
        "Metric": "prometheus_client.metrics_core",
    },
    "importlib.metadata": {"entry_points": "fleetgate.lean_imports"},
    # uvicorn.config imports it for a log_config fleetgate never passes.
    "logging.config": {},
    # shutil imports them only to know they are there (argparse imports shutil).
    "bz2": {},
    "lzma": {},
}
# Lean only where the extension module its own code imports is there: without it, the import
# fails as before (shutil then knows the format is not supported).
NEEDS: Mapping[str, str] = {"bz2": "_bz2", "lzma": "_lzma"}


# The entry point group answered without importlib.metadata: pydantic's plugins, which
# pydantic's loader only iterates (an empty tuple has no ``names`` or ``select``).
PYDANTIC_PLUGINS = "pydantic"


def entry_points(**params: Any) -> Any:
    """``importlib.metadata.entry_points``: none (``()``) for pydantic's plugin group when no
    installed distribution declares it (:func:`declares_no_entry_points`), found without
    importing importlib.metadata; else its own answer."""
    if params == {"group": PYDANTIC_PLUGINS} and declares_no_entry_points(PYDANTIC_PLUGINS):
        return ()
    module = importlib.import_module("importlib.metadata")
    # Still lean (this function is its entry_points): its own __init__ runs now.
    rest = vars(module).get("__getattr__")
    own = rest("entry_points") if rest is not None else module.entry_points
    return own(**params)


def declares_no_entry_points(group: str) -> bool:
    """True when no distribution :mod:`importlib.metadata` finds declares an entry point in
    ``group``; False when one may (only importlib.metadata can tell then).

    It finds them through the ``find_distributions`` of the finders on ``sys.meta_path``
    (``PathFinder``'s only is understood here): the ``*.dist-info`` and ``*.egg-info``
    folders in each ``sys.path`` entry (an ``.egg`` entry's ``EGG-INFO`` and a zip entry's
    members are left to it), their entry points in ``entry_points.txt`` (none when it
    cannot be read), each group under a ``[group]`` line: a file that does not mention the
    name declares none in it.
    """
    for finder in sys.meta_path:
        if (
            getattr(finder, "find_distributions", None) is not None
            and finder is not importlib.machinery.PathFinder
        ):
            return False
    for entry in sys.path:
        if not isinstance(entry, str) or entry.lower().endswith(".egg"):
            return False
        root = entry or "."
        try:
            children = os.listdir(root)
        except OSError:
            if os.path.exists(root):
                return False  # a zip file, or a folder it may read otherwise
            continue
        for child in children:
            if not child.lower().endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(root, child, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
                continue
            except (OSError, ValueError):
                return False
            if group in text:
                return False
    return True


# Finder and loader by their protocols (importlib.abc would import importlib.resources,
# tempfile, shutil... into every process that imports fleetgate).
class _LeanLoader:
    """Executes a module or package as: its listed names now, its own code on first need."""

    def __init__(self, loader: Loader, names: Mapping[str, str]) -> None:
        self.loader = loader
        self.names = names

    def __getattr__(self, name: str) -> Any:
        # get_code, get_source, get_resource_reader...: the package's own loader answers.
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        loader = self.loader
        for name, source in self.names.items():
            setattr(module, name, getattr(importlib.import_module(source), name))

        def rest_of_package(name: str) -> Any:
            del module.__getattr__
            loader.exec_module(module)
            return getattr(module, name)

        module.__getattr__ = rest_of_package  # type: ignore[method-assign]


class _LeanFinder:
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        names = LEAN.get(fullname)
        if names is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        # A plain module or package from a source file only; anything else (frozen,
        # built in, an extension, a namespace package) is left to the other finders.
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        need = NEEDS.get(fullname)
        if need is not None and importlib.machinery.PathFinder.find_spec(need) is None:
            return None
        spec.loader = _LeanLoader(spec.loader, names)  # type: ignore[assignment]
        return spec


_FINDER = _LeanFinder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
