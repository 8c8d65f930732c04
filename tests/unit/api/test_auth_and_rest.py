"""REST auth (401/403 JSON errors, scopes, open paths), the REST additions (cursor pages,
fields=, topic=, online state, positions, GeoJSON tracks) and the pages served without a CDN."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetgate.api.app import create_api
from fleetgate.api.auth import Authenticator, parse_duration
from fleetgate.config import build_config
from fleetgate.records import Record, now_ms
from fleetgate.store import RecordStore
from tests.tokens import TEST_SECRET, bearer, make_token

IMEI = "356307042441013"
VIN = "5YJ3E1EA7KF000001"
GATEWAY = "gateway-001"


def make_client(tmp_path: Path, store: RecordStore | None, **api: Any) -> TestClient:
    api_section = {"auth": {"secret": TEST_SECRET, **api.pop("auth", {})}, **api}
    config = build_config({"data_dir": str(tmp_path), "api": api_section}, environ={})
    auth = Authenticator(config.api.auth, config.data_path)
    app = create_api(store, lambda: {"status": "ok"}, auth=auth, settings=config.api)
    return TestClient(app)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    store = RecordStore(tmp_path / "fleetgate.db")
    now = now_ms()
    records = [
        Record(
            "teltonika",
            IMEI,
            "position",
            1_000 + n * 1000,
            now,
            {"latitude": 54.0 + n / 100, "longitude": 25.0, "speed": n, "altitude": 100},
        )
        for n in range(10)
    ]
    records.append(
        Record(
            "teltonika",
            IMEI,
            "event",
            20_000,
            now,
            {"latitude": 0.0, "longitude": 0.0, "speed": 0, "event_io_id": 1},
        )
    )
    records.append(
        Record(
            "tesla",
            VIN,
            "V",
            5_000,
            now - 3_600_000,
            {"Location": {"latitude": 37.4, "longitude": -122.1}, "VehicleSpeed": 30},
        )
    )
    records.append(Record("tesla", VIN, "V", 6_000, now - 3_600_000, {"Soc": 80}))
    records.append(
        Record(
            "mqtt", GATEWAY, "engine", 7_000, now, {"signal": "rpm", "value": 3500, "unit": "rpm"}
        )
    )
    store.write(records)
    yield store
    store.close()


@pytest.fixture
def client(tmp_path: Path, store: RecordStore) -> TestClient:
    return make_client(tmp_path, store)


def get(client: TestClient, path: str, token: str | None = None, **params: Any) -> Any:
    headers = bearer(token if token is not None else make_token())
    return client.get(path, params=params, headers=headers)


# -- auth ----------------------------------------------------------------------------------------
# Headers are built when the test runs, not at collection: a token "valid in 10 minutes"
# made at collection is valid by the time a long suite reaches the test.
@pytest.mark.parametrize(
    ("make_headers", "error", "words"),
    [
        (dict, "missing_token", "Authorization: Bearer"),
        (lambda: {"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_token", "must be 'Bearer"),
        (lambda: bearer("garbage"), "invalid_token", "not a JWT"),
        (
            lambda: bearer(make_token("a-different-secret-that-is-long-enough")),
            "invalid_token",
            "signature",
        ),
        (
            lambda: bearer(make_token(exp=int(time.time()) - 600)),
            "token_expired",
            "expired at",
        ),
        (
            lambda: bearer(make_token(nbf=int(time.time()) + 600)),
            "token_not_yet_valid",
            "not valid before",
        ),
        (lambda: bearer(make_token("x" * 64, algorithm="HS512")), "invalid_token", "HS512"),
    ],
    ids=["missing", "basic", "garbage", "forged", "expired", "not_yet_valid", "hs512"],
)
def test_refused_tokens_get_401_with_a_json_reason(
    client: TestClient, make_headers: Callable[[], dict[str, str]], error: str, words: str
) -> None:
    headers = make_headers()
    response = client.get("/api/v1/devices", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    body = response.json()
    assert body["error"] == error
    assert words in body["detail"]
    assert "Traceback" not in response.text


def test_a_token_without_the_read_scope_gets_403(client: TestClient) -> None:
    response = get(client, "/api/v1/devices", make_token(scope="stream"))
    assert response.status_code == 403
    assert response.json() == {
        "error": "insufficient_scope",
        "detail": "this token lacks the 'read' scope (it has: stream)",
    }
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert (
        get(client, "/api/v1/devices", make_token(scopes=["read"], scope=None)).status_code == 200
    )


def test_health_and_metrics_are_open_by_default_and_can_be_closed(
    tmp_path: Path, store: RecordStore
) -> None:
    open_client = make_client(tmp_path, store)
    assert open_client.get("/health").status_code == 200
    assert open_client.get("/metrics").status_code == 200
    closed = make_client(tmp_path, store, auth={"public_paths": []})
    assert closed.get("/health").status_code == 401
    assert closed.get("/metrics").json()["error"] == "missing_token"
    assert closed.get("/health", headers=bearer(make_token())).status_code == 200


def test_auth_can_be_disabled(tmp_path: Path, store: RecordStore) -> None:
    client = make_client(tmp_path, store, auth={"enabled": False})
    assert client.get("/api/v1/devices").status_code == 200


def test_issuer_and_audience_when_configured(tmp_path: Path, store: RecordStore) -> None:
    client = make_client(tmp_path, store, auth={"issuer": "fg", "audience": "ops"})
    assert get(client, "/api/v1/devices", make_token(iss="fg", aud="ops")).status_code == 200
    wrong_iss = get(client, "/api/v1/devices", make_token(iss="x", aud="ops"))
    assert (wrong_iss.status_code, wrong_iss.json()["detail"]) == (401, "token issuer is not 'fg'")
    wrong_aud = get(client, "/api/v1/devices", make_token(iss="fg", aud=["x", "y"]))
    assert wrong_aud.json()["detail"] == "token audience is not 'ops'"


def test_issued_tokens_verify_and_carry_their_scopes(tmp_path: Path) -> None:
    config = build_config({"data_dir": str(tmp_path)}, environ={})
    auth = Authenticator(config.api.auth, config.data_path)
    assert auth.key_created and auth.key_in_data_dir
    assert (tmp_path / "api-secret.key").stat().st_mode & 0o777 == 0o600
    principal = auth.verify(auth.issue("alice", 60, ["read", "command"]))
    assert principal.subject == "alice"
    assert principal.scopes == {"read", "command"}
    # The same data directory, the same key: a second process verifies the first's tokens.
    again = Authenticator(config.api.auth, config.data_path)
    assert not again.key_created
    assert again.verify(auth.issue("bob", 60, ["read"])).subject == "bob"


def test_rs256_and_es256_key_pairs(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    keys = {
        "RS256": rsa.generate_private_key(65537, 2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
    }
    for algorithm, key in keys.items():
        private = tmp_path / f"{algorithm}.pem"
        public = tmp_path / f"{algorithm}.pub"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        issuer = Authenticator(
            build_config(
                {"api": {"auth": {"algorithm": algorithm, "private_key_file": str(private)}}},
                environ={},
            ).api.auth,
            tmp_path,
        )
        verifier = Authenticator(
            build_config(
                {"api": {"auth": {"algorithm": algorithm, "public_key_file": str(public)}}},
                environ={},
            ).api.auth,
            tmp_path,
        )
        assert not verifier.can_issue
        assert verifier.verify(issuer.issue("svc", 60, ["stream"]), "stream").subject == "svc"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


# -- REST --------------------------------------------------------------------------------------
def test_devices_carry_online_state_and_last_position(client: TestClient) -> None:
    devices = {d["id"]: d for d in get(client, "/api/v1/devices").json()["devices"]}
    assert devices[IMEI]["online"] is True
    # The newest Teltonika record is at 0, 0 (no GPS fix): the one before is the position.
    assert devices[IMEI]["position"] == {
        "latitude": 54.09,
        "longitude": 25.0,
        "at": "1970-01-01T00:00:10.000Z",
    }
    assert devices[VIN]["online"] is False  # heard an hour ago, online_window_s is 600
    assert devices[VIN]["position"]["latitude"] == 37.4
    assert devices[GATEWAY]["position"] is None
    found = get(client, "/api/v1/devices", search="5yj3").json()["devices"]
    assert [d["id"] for d in found] == [VIN]
    one = get(client, f"/api/v1/devices/{VIN}").json()
    assert one["id"] == VIN and one["record_count"] == 2
    assert get(client, "/api/v1/devices/nobody").status_code == 404


def test_cursor_pages_cover_every_record_once_in_order(client: TestClient) -> None:
    url = f"/api/v1/devices/{IMEI}/records"
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = get(client, url, **params).json()
        seen += [int(r["data"]["speed"]) for r in body["records"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 4
    assert seen == [0, *range(9, -1, -1)]  # the event at 20 s, then the positions
    assert get(client, url, cursor="%%%").status_code == 400


def test_topic_fields_and_time_range(client: TestClient) -> None:
    url = f"/api/v1/devices/{IMEI}/records"
    events = get(client, url, topic="event").json()["records"]
    assert [r["topic"] for r in events] == ["event"]
    narrowed = get(client, url, fields="speed,altitude", since="5000", until="6000").json()
    assert [r["data"] for r in narrowed["records"]] == [
        {"speed": 5, "altitude": 100},
        {"speed": 4, "altitude": 100},
    ]
    gateway = get(client, f"/api/v1/devices/{GATEWAY}/records", fields="rpm").json()["records"]
    assert gateway[0]["data"] == {"signal": "rpm", "value": 3500, "unit": "rpm"}


def test_time_range_queries_read_spans_on_their_index_and_rows_by_id_range(
    store: RecordStore,
) -> None:
    from fleetgate.store_spans import ids_query, row_query, runs_query, span_query

    def plan(connection: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> str:
        rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return " ".join(str(row[-1]) for row in rows)

    with sqlite3.connect(store.path) as connection:
        spans = plan(connection, span_query("main"), (IMEI, 1, 2))
        assert "USING INDEX spans_by_device (device_id=?)" in spans
        for ordered in (True, False):
            sql = row_query("main", "data", " AND topic = ?", ordered)
            rows = plan(connection, sql, (1, 9, IMEI, 1, 2, "position", 10))
            assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in rows
        # A span's runs: each run by id range; short runs by their ids, in id order (no sort).
        rows = plan(
            connection, runs_query("main", "data", " AND topic = ?"),
            ("[[1, 2], [5, 9]]", IMEI, 1, 2, "position", 10),
        )
        assert "SCAN json_each" in rows
        assert "records USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in rows
        rows = plan(
            connection, ids_query("main", "data", " AND topic = ?"),
            ("[1, 2, 5]", IMEI, 1, 2, "position", 10),
        )
        assert "records USING INTEGER PRIMARY KEY (rowid=?)" in rows
        assert "TEMP B-TREE" not in rows
        indexes = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'"
        ).fetchall()
    assert indexes == []  # no per-record index to keep up


def test_track_is_geojson_oldest_first_without_unfixed_positions(client: TestClient) -> None:
    response = get(client, f"/api/v1/devices/{IMEI}/track", since="0", until="100000")
    assert response.headers["content-type"] == "application/geo+json"
    feature = response.json()
    assert feature["type"] == "Feature"
    assert feature["geometry"]["type"] == "LineString"
    coordinates = feature["geometry"]["coordinates"]
    assert coordinates[0] == [25.0, 54.0] and coordinates[-1] == [25.0, 54.09]
    assert len(coordinates) == 10  # the 0, 0 record is not a position
    assert feature["properties"]["times"][0] == "1970-01-01T00:00:01.000Z"
    single = get(client, f"/api/v1/devices/{VIN}/track", since="0", until="100000").json()
    assert single["geometry"] == {"type": "Point", "coordinates": [-122.1, 37.4]}
    none = get(client, f"/api/v1/devices/{GATEWAY}/track", since="0").json()
    assert none["geometry"] is None and none["properties"]["count"] == 0


def test_signal_units_come_from_the_teltonika_io_table(client: TestClient) -> None:
    units = get(client, "/api/v1/signals").json()
    assert units["teltonika"]["external_voltage"] == "V"
    assert units["teltonika"]["speed"] == "km/h"


# -- pages -----------------------------------------------------------------------------------
def test_dashboard_and_docs_load_without_a_token_and_without_a_cdn(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "img-src 'self' data: https://tile.openstreetmap.org" in policy
    docs = client.get("/docs")
    assert docs.status_code == 200
    for html in (page.text, docs.text):
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html)
        assert urls, html
        assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    for asset in re.findall(r"""(?:src|href)=["'](/static/[^"']+)""", page.text + docs.text):
        assert client.get(asset).status_code == 200, asset
    config = client.get("/dashboard/config.json").json()
    assert config["tile_url"].startswith("https://tile.openstreetmap.org/")
    assert config["missing_libraries"] == []
    assert client.get("/redoc").status_code == 404
