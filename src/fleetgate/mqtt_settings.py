"""``mqtt_ingest``: the settings of the CAN-gateway subscriber.

(Tesla's ``mqtt`` key stays the *dispatcher* that publishes records; this section is the
other direction: fleetgate subscribing to the broker the gateways publish to.)

::

    "mqtt_ingest": {
      "url": "mqtts://broker.example.com:8883",
      "topics": ["vehicles/+/#"],
      "client_id": "fleetgate-1",
      "tls": {"ca_file": "certs/ca.crt", "cert": "certs/fleetgate.crt",
              "key": "certs/fleetgate.key"},
      "shared_group": "fleetgate",
      "hmac_keys": {"gw-001": "a per-gateway secret", "gw-002": "hex:8f1c..."},
      "max_drift_s": 300
    }

Passwords and HMAC keys are :class:`~pydantic.SecretStr`: they never show in a repr, a
log line or ``/health``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# The topic root of fleetgate.protocols.mqtt.topics (a test holds the two equal). The
# protocol package (signal table, payload codec, HMAC canonical form) is imported only when
# a config has this section: every config loads this module, few use it (issue 11: memory).
DEFAULT_ROOT: Final = "vehicles"

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class MqttIngestTls(BaseModel):
    """TLS towards the broker: the CA that signed the broker's certificate, and fleetgate's
    own client certificate and key for brokers that require mutual TLS."""

    model_config = ConfigDict(extra="ignore")

    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> MqttIngestTls:
        if self.key and not self.cert:
            raise ValueError("tls.key is set without tls.cert")
        return self


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _default_client_id() -> str:
    return f"fleetgate-{socket.gethostname()}"[:64]


class MqttIngestConfig(BaseModel):
    """Subscriber to the broker CAN gateways publish to."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    enabled: bool = True
    url: str = "mqtt://127.0.0.1:1883"
    # Topic filters; each gets ``$share/<shared_group>/`` in front when that is set.
    topics: list[str] = Field(default_factory=lambda: [f"{DEFAULT_ROOT}/+/#"])
    # The topic levels in front of <gateway-id>/<group>/<signal>.
    topic_root: str = DEFAULT_ROOT
    # Subscription QoS: 1 for at-least-once (acked after the records are safe), 0 for speed.
    qos: int = Field(1, ge=0, le=1)
    # Must be stable (the broker keeps the session under it) and unique per fleetgate node.
    client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=128)
    protocol: Literal["5", "3.1.1"] = "5"
    tls: MqttIngestTls | None = None
    username: str | None = None
    password: SecretStr | None = None
    # MQTT 5 shared subscription: nodes with the same group split one stream between them.
    shared_group: str | None = None
    # Per gateway id: UTF-8 text, or "hex:<digits>". A gateway with a key must sign.
    hmac_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # Refuse messages whose ts is further than this from the arrival time (None: no check).
    # Set it longer than the outages you want to ride out: QoS 1 messages the broker or a
    # gateway queued during an outage arrive late but carry their original ts.
    max_drift_s: float | None = Field(None, gt=0)
    # Persistent session: how long the broker keeps our subscription and queued QoS 1
    # messages while fleetgate is away (MQTT 5; MQTT 3.1.1 sessions never expire).
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, le=0xFFFFFFFF)
    # QoS 1 messages the broker may have in flight to us before our PUBACKs (MQTT 5).
    receive_maximum: int = Field(1000, ge=1, le=65535)
    keepalive_s: int = Field(30, ge=5, le=65535)
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    # Records handed to the pipeline in one accept() call, and messages held before the
    # subscriber stops reading the socket (backpressure to the broker).
    max_batch: int = Field(2000, ge=1)
    max_pending: int = Field(20_000, ge=1)
    # stop() waits this long for records in hand to be accepted and acknowledged; what is
    # still unacknowledged then is redelivered by the broker on the next start.
    stop_timeout_s: float = Field(30.0, ge=0)
    # Refusal log lines: at most one per gateway and reason in this many seconds.
    refusal_log_interval_s: float = Field(10.0, ge=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        cls.parse_url(url)
        return url

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, topics: list[str]) -> list[str]:
        if not topics:
            raise ValueError("at least one topic filter is needed")
        for topic in topics:
            if not topic or topic.startswith("$share/") or "#" in topic[:-1]:
                raise ValueError(f"{topic!r} is not a topic filter (use shared_group for $share)")
        return topics

    @field_validator("shared_group")
    @classmethod
    def _check_group(cls, group: str | None) -> str | None:
        if group is not None and (not group or any(c in group for c in "/+#")):
            raise ValueError("shared_group must be non-empty without / + #")
        return group

    @field_validator("hmac_keys")
    @classmethod
    def _check_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        from fleetgate.protocols.mqtt import key_bytes, valid_gateway_id

        for gateway_id, secret in keys.items():
            if not valid_gateway_id(gateway_id):
                raise ValueError(f"hmac_keys: {gateway_id!r} is not a gateway id")
            try:
                key = key_bytes(secret.get_secret_value())
            except ValueError:
                raise ValueError(f"hmac_keys.{gateway_id}: hex: key with bad hex digits") from None
            if not key:
                raise ValueError(f"hmac_keys.{gateway_id} is empty")
        return keys

    @model_validator(mode="after")
    def _consistent(self) -> MqttIngestConfig:
        address = self.parse_url(self.url)
        if self.tls is not None and not address.tls:
            raise ValueError("tls is set but url is mqtt://; use mqtts://")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is below reconnect_min_s")
        return self

    @staticmethod
    def parse_url(url: str) -> BrokerAddress:
        """``mqtt://host[:port]`` or ``mqtts://host[:port]`` → scheme, host, port."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"url must start with mqtt:// or mqtts:// (got {url!r})")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in username/password, not in the url")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ValueError(f"url has a bad port: {url!r}") from None
        if not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"url must be scheme://host:port only (got {url!r})")
        return BrokerAddress(parts.scheme, parts.hostname, port)

    @property
    def broker(self) -> BrokerAddress:
        return self.parse_url(self.url)

    @property
    def subscriptions(self) -> list[str]:
        """The filters sent in SUBSCRIBE (shared when ``shared_group`` is set)."""
        if self.shared_group is None:
            return list(self.topics)
        return [f"$share/{self.shared_group}/{topic}" for topic in self.topics]

    def key_map(self) -> dict[str, bytes]:
        """The HMAC keys as bytes, by gateway id."""
        from fleetgate.protocols.mqtt import key_bytes

        return {
            gateway_id: key_bytes(secret.get_secret_value())
            for gateway_id, secret in self.hmac_keys.items()
        }
