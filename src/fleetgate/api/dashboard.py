"""The web dashboard at ``/`` and the OpenAPI page at ``/docs``, both from local files.

The pages load only files of this server: the hand-written dashboard under ``static/`` and
the third-party libraries (Leaflet, uPlot, swagger-ui) that ``make install`` copies from
npm packages into ``static/vendor/``. The dashboard page's Content-Security-Policy allows
scripts and connections to this origin only (images also from the configured tile server),
so nothing is ever fetched from a CDN. The pages themselves need no token: the dashboard
asks for one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from fleetgate import __version__
from fleetgate.config import DashboardConfig

log = logging.getLogger("fleetgate.api")

STATIC_DIR: Final = Path(__file__).parent / "static"
VENDOR_DIR: Final = STATIC_DIR / "vendor"
VENDOR_FILES: Final = (
    "leaflet/leaflet.js",
    "leaflet/leaflet.css",
    "uplot/uPlot.iife.min.js",
    "uplot/uPlot.min.css",
    "swagger-ui/swagger-ui-bundle.js",
    "swagger-ui/swagger-ui.css",
)


def missing_vendor_files() -> list[str]:
    return [name for name in VENDOR_FILES if not (VENDOR_DIR / name).is_file()]


def content_security_policy(tile_url: str) -> str:
    """Scripts, styles and connections from this origin only; images also from the tiles."""
    images = ["'self'", "data:"]
    if tile_url:
        parts = urlsplit(tile_url)
        if parts.scheme and parts.netloc:
            # Leaflet's {s} subdomain placeholder: any subdomain of the tile host.
            images.append(f"{parts.scheme}://{parts.netloc.replace('{s}', '*')}")
    return (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src {' '.join(images)}; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    )


def add_dashboard(api: FastAPI, settings: DashboardConfig, online_window_s: float) -> None:
    """Serve ``/`` (dashboard), ``/static``, ``/dashboard/config.json`` and ``/docs``."""
    missing = missing_vendor_files()
    if missing:
        log.warning(
            "dashboard: JavaScript libraries missing (%s); run `make install`", ", ".join(missing)
        )
    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    policy = content_security_policy(settings.tile_url)

    if settings.enabled:

        @api.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(
                STATIC_DIR / "index.html",
                headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache"},
            )

    @api.get("/dashboard/config.json", include_in_schema=False)
    def dashboard_config() -> dict[str, Any]:
        return {
            "version": __version__,
            "tile_url": settings.tile_url,
            "tile_attribution": settings.tile_attribution,
            "online_window_s": online_window_s,
            "missing_libraries": missing_vendor_files(),
        }

    @api.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=api.openapi_url or "/openapi.json",
            title=f"{api.title} API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
