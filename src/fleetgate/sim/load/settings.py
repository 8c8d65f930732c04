"""What one load run is: devices per protocol, pacing, where the server is, how to measure.

:class:`LoadSettings` is picklable (it travels to every generator process). Device ``i``
of a protocol belongs to process ``i % processes``; its identity (IMEI, VIN certificate,
gateway id) depends only on ``i``, so a run's devices are the same whatever the number of
processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from fleetgate.mqtt_settings import MqttIngestConfig
from fleetgate.pki import CA_CERT, VEHICLES_DIR
from fleetgate.protocols.mqtt import valid_gateway_id
from fleetgate.sim.teltonika import CODECS
from fleetgate.sim.tesla import VehicleCredentials, credentials_from_dir

FIRST_IMEI: Final = 356307100000000
PROTOCOLS: Final = ("teltonika", "tesla", "gateways")


class LoadSettingsError(ValueError):
    """The options do not describe a run that can start."""


@dataclass(slots=True)
class LoadSettings:
    teltonika: int = 0
    tesla: int = 0
    gateways: int = 0
    # Frames (Teltonika, Tesla) or messages (gateways) per second per device; 0 = as fast
    # as acks allow (stop-and-wait per tracker, a window per vehicle and gateway).
    rate: float = 0.0
    duration_s: float = 10.0
    warmup_s: float = 1.0
    processes: int = 1
    host: str = "127.0.0.1"
    teltonika_port: int = 5027
    tesla_url: str | None = None  # default wss://<host>:4443/
    broker: str | None = None  # default mqtt://<host>:1883
    broker_ca: str | None = None
    ca: str | None = None
    cert_dir: str | None = None
    codec: str = "8E"
    records_per_frame: int = 10
    io_elements: int = 10
    tesla_window: int = 16
    gateway_window: int = 16
    topic_root: str = "vehicles"
    first_imei: int = FIRST_IMEI
    gateway_prefix: str = "load-gw"
    api: str | None = None
    api_token: str | None = None  # bearer token for --api (read scope)
    server_pid: int | None = None
    connect_timeout_s: float = 30.0
    drain_s: float = 10.0
    settle_s: float = 60.0
    seed: int = 1
    credentials: list[VehicleCredentials] = field(default_factory=list)

    @property
    def tesla_target(self) -> str:
        return self.tesla_url or f"wss://{self.host}:4443/"

    @property
    def broker_url(self) -> str:
        return self.broker or f"mqtt://{self.host}:1883"

    def count(self, protocol: str) -> int:
        value: int = getattr(self, protocol)
        return value

    def share(self, protocol: str, process: int) -> range:
        """Global indices of ``protocol``'s devices that process ``process`` runs."""
        return range(process, self.count(protocol), self.processes)

    def imei(self, index: int) -> str:
        return str(self.first_imei + index)

    def gateway_id(self, index: int) -> str:
        return f"{self.gateway_prefix}-{index:06d}"

    def vehicle(self, index: int) -> VehicleCredentials:
        return self.credentials[index % len(self.credentials)]

    def check(self) -> None:
        """Validate, and load the vehicle certificates when vehicles are asked for."""
        if min(self.teltonika, self.tesla, self.gateways) < 0:
            raise LoadSettingsError("device counts cannot be negative")
        if not self.teltonika + self.tesla + self.gateways:
            raise LoadSettingsError("no devices: give --teltonika, --tesla and/or --gateways")
        if self.processes < 1:
            raise LoadSettingsError("--processes must be at least 1")
        if self.rate < 0 or self.duration_s <= 0 or self.warmup_s < 0:
            raise LoadSettingsError("--rate and --warmup must be >= 0, --duration > 0")
        if self.codec not in CODECS:
            raise LoadSettingsError(f"--codec must be one of {', '.join(CODECS)}")
        if not 1 <= self.records_per_frame <= 255:
            raise LoadSettingsError("--records-per-frame must be 1..255")
        if not 1 <= self.tesla_window <= 9999 or not 1 <= self.gateway_window <= 65535:
            raise LoadSettingsError("windows must be 1..9999 (Tesla) and 1..65535 (gateways)")
        if self.gateways:
            try:
                MqttIngestConfig.parse_url(self.broker_url)
            except ValueError as exc:
                raise LoadSettingsError(f"--broker: {exc}") from None
            if not valid_gateway_id(self.gateway_id(self.gateways)):
                raise LoadSettingsError(f"--gateway-prefix {self.gateway_prefix!r} is no id")
        if self.tesla and not self.credentials:
            self.credentials = load_credentials(self.ca, self.cert_dir)

    def public(self) -> dict[str, Any]:
        """The settings as the JSON report shows them (no certificate list)."""
        data = asdict(self)
        data.pop("credentials")
        data["tesla_url"] = self.tesla_target if self.tesla else None
        data["broker"] = self.broker_url if self.gateways else None
        data["vehicle_certificates"] = len(self.credentials)
        return data


def pki_paths(directory: str | Path) -> tuple[str, str]:
    """The CA file and vehicle certificate folder of a ``fleetgate certs init`` directory."""
    base = Path(directory)
    return str(base / CA_CERT), str(base / VEHICLES_DIR)


def load_credentials(ca: str | None, cert_dir: str | None) -> list[VehicleCredentials]:
    if not ca or not cert_dir:
        raise LoadSettingsError(
            "Tesla vehicles need certificates: --pki DIR (from `fleetgate certs init`) "
            "or --ca FILE and --cert-dir DIR"
        )
    if not Path(ca).is_file():
        raise LoadSettingsError(f"CA certificate {ca} not found")
    found = credentials_from_dir(cert_dir) if Path(cert_dir).is_dir() else []
    if not found:
        raise LoadSettingsError(f"no <name>.crt/<name>.key pairs in {cert_dir}")
    return found
