"""``fleetgate stream``: print the live records of ``/stream`` in a terminal.

One record per line in its JSON form on standard output; notices (dropped records, errors,
reconnects) on standard error. A lost connection is retried with backoff; a refused token
(close code 4401 / 4403) or a bad filter ends the command with exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fleetgate.commands.serve import add_config_argument
from fleetgate.config import load_config

# Close codes after which retrying cannot help (see fleetgate.api.stream).
FATAL_CLOSE_CODES = {4400, 4401, 4403}
RETRY_MAX_S = 10.0


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "stream", help="print live records from a server's /stream (one JSON object per line)"
    )
    add_config_argument(parser)
    parser.add_argument(
        "--token",
        default=os.environ.get("FLEETGATE_TOKEN"),
        help="token with the stream scope (fleetgate token prints one; default $FLEETGATE_TOKEN)",
    )
    parser.add_argument(
        "--url", help="the server's /stream URL (default: the API address of the config)"
    )
    parser.add_argument("--device", action="append", default=[], help="device id (repeat)")
    parser.add_argument("--source", action="append", default=[], help="tesla, teltonika, mqtt")
    parser.add_argument("--topic", action="append", default=[], help="topic (repeat)")
    parser.add_argument("--signal", action="append", default=[], help="signal name (repeat)")
    parser.add_argument("--count", type=int, default=None, help="exit after this many records")
    parser.add_argument("--ca", help="CA file of the server certificate (wss URLs)")
    parser.set_defaults(handler=run)


def stream_url(args: argparse.Namespace) -> str:
    if args.url:
        base = args.url
    else:
        api = load_config(args.config).api
        host = "127.0.0.1" if api.host in ("", "0.0.0.0", "::") else api.host
        host = f"[{host}]" if ":" in host else host
        base = f"{'wss' if api.tls_cert else 'ws'}://{host}:{api.port}/stream"
    query = [("device_id", value) for value in args.device]
    query += [("source", value) for value in args.source]
    query += [("topic", value) for value in args.topic]
    query += [("signal", value) for value in args.signal]
    if not query:
        return str(base)
    return f"{base}{'&' if '?' in base else '?'}{urlencode(query)}"


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("fleetgate stream: give --token (or set FLEETGATE_TOKEN)", file=sys.stderr)
        return 2
    url = stream_url(args)
    try:
        return asyncio.run(follow(url, args.token, args.count, args.ca))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fleetgate stream ... | head`): no traceback, the shell's code.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


async def follow(url: str, token: str, count: int | None, ca: str | None) -> int:
    """Print records until ``count`` arrived or a fatal refusal; retry lost connections."""
    context = ssl.create_default_context(cafile=ca) if url.startswith("wss:") else None
    headers = {"Authorization": f"Bearer {token}"}
    printed = 0
    delay = 0.5
    out = sys.stdout
    while True:
        try:
            async with connect(
                url, additional_headers=headers, ssl=context, max_size=None
            ) as websocket:
                async for message in websocket:
                    body = orjson.loads(message)
                    items = body if isinstance(body, list) else [body]
                    for item in items:
                        if "type" in item:
                            _notice(item)
                            if item["type"] == "ready":
                                delay = 0.5
                            continue
                        out.write(orjson.dumps(item).decode() + "\n")
                        printed += 1
                        if count is not None and printed >= count:
                            out.flush()
                            return 0
                    out.flush()
                closed = websocket.close_code
        except BrokenPipeError:
            raise  # our reader is gone, not the server
        except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
            closed = getattr(getattr(exc, "rcvd", None), "code", None)
            if closed is None:
                print(f"fleetgate stream: {url}: {exc}", file=sys.stderr)
        except InvalidURI as exc:
            print(f"fleetgate stream: {exc}", file=sys.stderr)
            return 2
        if closed in FATAL_CLOSE_CODES:
            return 1
        print(f"fleetgate stream: disconnected; reconnecting in {delay:g} s", file=sys.stderr)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


def _notice(item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind == "error":
        print(f"fleetgate stream: {item.get('error')}: {item.get('detail')}", file=sys.stderr)
    elif kind == "dropped":
        print(
            f"fleetgate stream: the server dropped {item.get('count')} records "
            f"(reading too slowly; {item.get('total')} in all)",
            file=sys.stderr,
        )
    elif kind == "ready":
        print(f"fleetgate stream: streaming as {item.get('subject')!r}", file=sys.stderr)
