"""``fleetgate command IMEI TEXT``: send a command to a tracker through a server's API.

It posts to ``/api/v1/devices/{imei}/commands`` with a token holding the ``command`` scope
and prints the device's answer on standard output (``--json``: the command's JSON object);
the state of the command goes to standard error. A command for a device that is not
connected is queued by the server; this waits for the device to connect and answer, up to
``--timeout`` seconds (``--no-wait``: report ``queued`` and return). Exit codes: 0
answered, 1 not answered (nACK, timed out, still queued or sent when the wait ended, or
the server unreachable), 2 a refused request or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fleetgate.commands.serve import add_config_argument
from fleetgate.config import load_config

EXIT_ANSWERED = 0
EXIT_NOT_ANSWERED = 1
EXIT_USAGE = 2
POLL_INTERVAL_S = 0.5
PENDING = ("queued", "sent")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "command",
        help="send a command (getinfo, getver, ...) to a Teltonika tracker and print its answer",
    )
    add_config_argument(parser)
    parser.add_argument("imei", help="the tracker's IMEI")
    parser.add_argument("text", help='the command, such as "getinfo" or "setdigout 1"')
    parser.add_argument(
        "--codec",
        type=int,
        choices=(12, 14),
        default=12,
        help="12 (default), or 14: addressed by IMEI (a device with another IMEI says nACK)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("FLEETGATE_TOKEN"),
        help="token with the command scope (fleetgate token --scope command,read; "
        "default $FLEETGATE_TOKEN)",
    )
    parser.add_argument("--url", help="the API's base URL (default: the API address of the config)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the answer, also for a device that is not connected yet "
        "(default 60)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the server has the command (a device not connected: queued)",
    )
    parser.add_argument("--json", action="store_true", help="print the command's JSON object")
    parser.add_argument("--ca", help="CA file of the server certificate (https URLs)")
    parser.set_defaults(handler=run)


def api_base(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    api = load_config(args.config).api
    host = "127.0.0.1" if api.host in ("", "0.0.0.0", "::") else api.host
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if api.tls_cert else 'http'}://{host}:{api.port}"


class ApiError(Exception):
    """The API refused the request (its status and JSON reason) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """The few API calls this command makes."""

    def __init__(self, base: str, token: str, ca: str | None) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.context = ssl.create_default_context(cafile=ca) if base.startswith("https:") else None

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read())
            except ValueError:
                reason = {}
            if exc.code == 504:  # the command timed out: its state, not a refusal
                return reason
            detail = reason.get("detail") if isinstance(reason, dict) else None
            error = reason.get("error") if isinstance(reason, dict) else None
            text = f"{error}: {detail}" if error else str(detail or exc.reason)
            raise ApiError(f"{method} {path}: HTTP {exc.code}: {text}", exc.code) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"{self.base}: {reason}") from None


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("fleetgate command: give --token (or set FLEETGATE_TOKEN)", file=sys.stderr)
        return EXIT_USAGE
    if args.timeout <= 0:
        print("fleetgate command: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    client = Client(api_base(args), args.token, args.ca)
    path = f"/api/v1/devices/{urllib.parse.quote(args.imei, safe='')}/commands"
    deadline = time.monotonic() + args.timeout
    try:
        view = client.call(
            "POST",
            path,
            {"command": args.text, "codec": args.codec, "timeout_s": min(args.timeout, 600.0)},
            timeout=args.timeout + 10,
        )
        if view.get("status") == "queued" and not args.no_wait:
            print(
                f"fleetgate command: {args.imei} is not connected; command {view['id']} is "
                f"queued; waiting up to {args.timeout:g} s for the device",
                file=sys.stderr,
            )
        while view.get("status") in PENDING and not args.no_wait and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
            view = client.call("GET", f"{path}/{view['id']}")
    except ApiError as exc:
        print(f"fleetgate command: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.status is not None and 400 <= exc.status < 500 else 1
    return report(view, args.json)


def report(view: dict[str, Any], as_json: bool) -> int:
    status = view.get("status")
    if as_json:
        print(json.dumps(view))
    elif status == "answered":
        print(view.get("response") or "")
    where = f"command {view.get('id')} to {view.get('device_id')}: {status}"
    if status == "answered":
        print(f"fleetgate command: {where}", file=sys.stderr)
        return EXIT_ANSWERED
    detail = view.get("detail")
    print(f"fleetgate command: {where}{f' ({detail})' if detail else ''}", file=sys.stderr)
    return EXIT_NOT_ANSWERED
