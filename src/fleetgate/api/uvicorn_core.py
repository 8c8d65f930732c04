"""uvicorn's server without its command line (issue 11: idle memory).

``import uvicorn`` runs the package's ``__init__``, which imports ``uvicorn.main``: the
command line (click), its reload and multi-process supervisors (multiprocessing, pickle),
about 1 MiB of a server's idle memory that ``fleetgate serve`` never uses. The server
needs ``uvicorn.config`` and ``uvicorn.server`` only; :func:`uvicorn_classes` imports those
two under a package module whose ``__init__`` has not run yet, and runs it the first time
someone asks the package for a name it does not have (``uvicorn.run``,
``uvicorn.__version__``...), so the package still behaves as uvicorn wrote it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn import Config, Server

PACKAGE = "uvicorn"


def uvicorn_classes() -> tuple[type[Config], type[Server]]:
    """uvicorn's ``Config`` and ``Server`` classes, its command line not imported."""
    package = sys.modules.get(PACKAGE) or _package_without_cli()
    return package.Config, package.Server


def _package_without_cli() -> ModuleType:
    spec = importlib.util.find_spec(PACKAGE)
    loader = spec.loader if spec is not None else None
    if spec is None or loader is None or spec.submodule_search_locations is None:
        return importlib.import_module(PACKAGE)  # not a plain package: import it as it is
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    try:
        # uvicorn's own modules take these two from the package (``from uvicorn import
        # Config``), as its __init__ would have set them.
        package.Config = importlib.import_module(f"{PACKAGE}.config").Config  # type: ignore[attr-defined]
        package.Server = importlib.import_module(f"{PACKAGE}.server").Server  # type: ignore[attr-defined]
    except BaseException:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        raise

    def rest_of_package(name: str) -> Any:
        # The first name the package lacks: run its __init__ now (it imports uvicorn.main).
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = rest_of_package  # type: ignore[method-assign]
    return package
