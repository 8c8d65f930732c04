"""prometheus_client without the parts of its ``__init__`` a server does not use (issue 11).

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
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from importlib.abc import Loader
    from types import ModuleType

# Package -> the names set before its __init__ runs, and the module defining each.
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
}


# Finder and loader by their protocols (importlib.abc would import importlib.resources,
# tempfile, shutil... into every process that imports fleetgate).
class _LeanLoader:
    """Executes a package as: its listed names now, its own ``__init__`` on first need."""

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
        # A plain package from a directory only; anything else is left to the other finders.
        if (
            spec is None
            or not isinstance(spec.loader, importlib.machinery.SourceFileLoader)
            or spec.submodule_search_locations is None
        ):
            return None
        spec.loader = _LeanLoader(spec.loader, names)  # type: ignore[assignment]
        return spec


_FINDER = _LeanFinder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
