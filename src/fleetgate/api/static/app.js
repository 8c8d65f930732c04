// fleetgate dashboard: device list, map with trails, a device's live values and a chart.
// Data: the REST API (/api/v1) for what is stored, /stream for what arrives. The token comes
// from the sign-in link (#token=...) or the form and is kept in this browser's localStorage.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const TOKEN_KEY = "fleetgate.token";
  const COLORS = { teltonika: "#0969da", tesla: "#cf222e", mqtt: "#8250df" };
  const TRAIL_POINTS = 500;

  const state = {
    token: null,
    config: null,
    units: {},
    devices: new Map(), // id -> {id, source, lastSeen (ms), values: {name: {value, unit}}}
    selected: null,
    socket: null,
    retryMs: 1000,
    map: null,
    markers: new Map(),
    trails: new Map(),
    chart: null,
    chartField: null,
  };

  class AuthError extends Error {}

  // -- status and sign-in ----------------------------------------------------------------
  function setStatus(kind, text) {
    const status = $("#status");
    status.dataset.state = kind;
    status.textContent = text;
  }

  function takeToken() {
    const match = location.hash.match(/token=([^&]+)/);
    if (match) {
      localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return localStorage.getItem(TOKEN_KEY);
  }

  function showSignIn(message) {
    if (state.socket) state.socket.close();
    state.token = null;
    localStorage.removeItem(TOKEN_KEY);
    $("#app").hidden = true;
    $("#sign-out").hidden = true;
    $("#sign-in").hidden = false;
    $("#sign-in-message").textContent = message || "";
    if (!message) setStatus("signed-out", "signed out");
  }

  function tokenExpired(detail) {
    setStatus("expired", "token expired");
    showSignIn(`Your token is no longer accepted (${detail}). Sign in with a new one.`);
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      throw new AuthError(body.detail || response.statusText);
    }
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // A failed request outside the start-up path: say why, never an unhandled rejection.
  function reportFailure(error) {
    if (error instanceof AuthError) tokenExpired(error.message);
    else setStatus("unreachable", "server unreachable");
  }

  // -- devices and values ---------------------------------------------------------------
  function positionOf(data) {
    const place = data.Location || data;
    const lat = place.latitude, lon = place.longitude;
    if (typeof lat !== "number" || typeof lon !== "number" || (lat === 0 && lon === 0)) return null;
    return [lat, lon];
  }

  // [name, value, unit] of each signal a record carries.
  function valuesOf(record) {
    const data = record.data;
    if (typeof data.signal === "string" && "value" in data) {
      return [[data.signal, data.value, data.unit || ""]];
    }
    const units = state.units[record.source] || {};
    return Object.entries(data)
      .filter(([name]) => name !== "io")
      .map(([name, value]) => [name, value, units[name] || ""]);
  }

  function device(id, source) {
    let entry = state.devices.get(id);
    if (!entry) {
      entry = { id, source, lastSeen: 0, values: {} };
      state.devices.set(id, entry);
    }
    return entry;
  }

  function isOnline(entry) {
    return Date.now() - entry.lastSeen <= state.config.online_window_s * 1000;
  }

  function ago(ms) {
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return new Date(ms).toLocaleString();
  }

  function renderList() {
    const needle = $("#search").value.trim().toLowerCase();
    const list = $("#device-list");
    const entries = [...state.devices.values()]
      .filter((entry) => entry.id.toLowerCase().includes(needle))
      .sort((a, b) => b.lastSeen - a.lastSeen);
    list.replaceChildren(...entries.map((entry) => {
      const item = document.createElement("li");
      item.dataset.device = entry.id;
      item.classList.toggle("selected", entry.id === state.selected);
      const online = isOnline(entry);
      item.innerHTML = `<span class="kind ${entry.source}"></span><span class="device-id"></span>` +
        `<span class="${online ? "online" : "offline"}">${online ? "● online" : "○ offline"}</span>` +
        `<span class="seen"></span>`;
      item.querySelector(".kind").textContent = entry.source;
      item.querySelector(".device-id").textContent = entry.id;
      item.querySelector(".seen").textContent = entry.lastSeen ? `last seen ${ago(entry.lastSeen)}` : "";
      item.addEventListener("click", () => select(entry.id).catch(reportFailure));
      return item;
    }));
    $("#no-devices").hidden = state.devices.size > 0;
  }

  // Live records arrive many times a second: redraw the list at most twice a second.
  let listPending = false;
  function scheduleList() {
    if (listPending) return;
    listPending = true;
    setTimeout(() => { listPending = false; renderList(); }, 500);
  }

  // -- map ----------------------------------------------------------------------------------
  function initMap() {
    state.map = L.map("map", { worldCopyJump: true }).setView([20, 0], 2);
    if (state.config.tile_url) {
      L.tileLayer(state.config.tile_url, {
        maxZoom: 19, attribution: state.config.tile_attribution,
      }).addTo(state.map);
    }
  }

  function placeMarker(entry, position) {
    let marker = state.markers.get(entry.id);
    if (!marker) {
      marker = L.circleMarker(position, {
        radius: 7, weight: 2, color: "#fff", fillColor: COLORS[entry.source] || "#57606a",
        fillOpacity: 0.95, className: `device-marker marker-${entry.source}`,
      }).bindTooltip(entry.id).on("click", () => select(entry.id).catch(reportFailure)).addTo(state.map);
      state.markers.set(entry.id, marker);
      if (!state.selected) fitAll();
    } else {
      marker.setLatLng(position);
    }
  }

  function fitAll() {
    const placed = [...state.markers.values()].map((marker) => marker.getLatLng());
    if (placed.length) state.map.fitBounds(L.latLngBounds(placed).pad(0.3), { maxZoom: 14 });
  }

  function extendTrail(entry, position) {
    let trail = state.trails.get(entry.id);
    if (!trail) {
      trail = L.polyline([], {
        color: COLORS[entry.source] || "#57606a", weight: 2, opacity: 0.6, className: "trail",
      }).addTo(state.map);
      state.trails.set(entry.id, trail);
    }
    const points = trail.getLatLngs();
    points.push(position);
    if (points.length > TRAIL_POINTS) points.shift();
    trail.setLatLngs(points);
  }

  async function loadTrail(entry) {
    const since = new Date(Date.now() - 3600 * 1000).toISOString();
    const track = await api(`/api/v1/devices/${encodeURIComponent(entry.id)}/track?since=${since}&limit=${TRAIL_POINTS}`);
    if (!track.geometry) return;
    const coordinates = track.geometry.type === "Point" ? [track.geometry.coordinates] : track.geometry.coordinates;
    coordinates.forEach(([lon, lat]) => extendTrail(entry, [lat, lon]));
  }

  // -- device detail and chart -----------------------------------------------------------------
  async function select(id) {
    state.selected = id;
    $("#app").classList.add("with-detail");
    $("#detail").hidden = false;
    $("#detail-title").textContent = id;
    state.map.invalidateSize();
    renderList();
    const entry = state.devices.get(id);
    const marker = state.markers.get(id);
    if (marker) state.map.setView(marker.getLatLng(), Math.max(state.map.getZoom(), 15));
    const page = await api(`/api/v1/devices/${encodeURIComponent(id)}/records?limit=50`);
    page.records.reverse().forEach((record) => mergeValues(entry, record));
    renderValues();
    renderChartFields();
    await drawChart();
  }

  function mergeValues(entry, record) {
    for (const [name, value, unit] of valuesOf(record)) entry.values[name] = { value, unit };
  }

  function show(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(6).replace(/0+$/, "");
    if (value && typeof value === "object") return value.latitude !== undefined ? `${value.latitude}, ${value.longitude}` : JSON.stringify(value);
    return String(value);
  }

  function renderValues() {
    const entry = state.devices.get(state.selected);
    const body = $("#values tbody");
    const names = Object.keys(entry.values).sort();
    if (!names.length) {
      body.innerHTML = "<tr><td>No data yet</td></tr>";
      return;
    }
    body.replaceChildren(...names.map((name) => {
      const row = document.createElement("tr");
      row.dataset.signal = name;
      row.innerHTML = '<td class="name"></td><td class="value"></td><td class="unit"></td>';
      row.querySelector(".name").textContent = name;
      row.querySelector(".value").textContent = show(entry.values[name].value);
      row.querySelector(".unit").textContent = entry.values[name].unit;
      return row;
    }));
  }

  function renderChartFields() {
    const entry = state.devices.get(state.selected);
    const numeric = Object.keys(entry.values).filter((name) => typeof entry.values[name].value === "number").sort();
    const select = $("#chart-field");
    const keep = numeric.includes(state.chartField) ? state.chartField : (numeric.includes("speed") ? "speed" : numeric[0]);
    select.replaceChildren(...numeric.map((name) => new Option(name, name, false, name === keep)));
    state.chartField = keep || null;
  }

  function chartValue(record, field) {
    const data = record.data;
    if (typeof data.signal === "string") return data.signal === field ? data.value : undefined;
    return data[field];
  }

  async function drawChart() {
    const container = $("#chart");
    const field = state.chartField;
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    container.dataset.points = "0";
    if (!field) {
      container.innerHTML = '<p class="empty">No numeric values yet.</p>';
      return;
    }
    const since = new Date(Date.now() - Number($("#chart-range").value) * 1000).toISOString();
    const id = encodeURIComponent(state.selected);
    const page = await api(`/api/v1/devices/${encodeURIComponent(id)}/records?since=${since}&fields=${encodeURIComponent(field)}&limit=5000`);
    const times = [], values = [];
    for (const record of page.records.reverse()) {
      const value = chartValue(record, field);
      if (typeof value !== "number") continue;
      times.push(Date.parse(record.created_at) / 1000);
      values.push(value);
    }
    container.replaceChildren();
    state.chart = new uPlot({
      width: Math.max(260, container.clientWidth), height: 220,
      series: [{}, { label: field, stroke: "#0969da", width: 2 }],
      axes: [{}, { size: 60 }],
    }, [times, values], container);
    container.dataset.points = String(times.length);
  }

  function appendToChart(record) {
    const value = chartValue(record, state.chartField);
    if (!state.chart || typeof value !== "number") return;
    const [times, values] = state.chart.data;
    times.push(Date.parse(record.created_at) / 1000);
    values.push(value);
    state.chart.setData([times, values]);
    $("#chart").dataset.points = String(times.length);
  }

  // -- live records -------------------------------------------------------------------------
  function onRecord(record) {
    const entry = device(record.device_id, record.source);
    entry.lastSeen = Math.max(entry.lastSeen, Date.parse(record.received_at));
    mergeValues(entry, record);
    const position = positionOf(record.data);
    if (position) {
      placeMarker(entry, position);
      extendTrail(entry, position);
    }
    if (record.device_id === state.selected) {
      renderValues();
      appendToChart(record);
    }
  }

  function connectStream() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/stream?batch=1`);
    state.socket = socket;
    if (state.devices.size) setStatus("connecting", "connecting");
    // The token goes in the first message: never in a URL (logs, history).
    socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token: state.token })));
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      const items = Array.isArray(message) ? message : [message];
      for (const item of items) {
        if (item.type === "ready") {
          state.retryMs = 1000;
          setStatus(state.devices.size ? "live" : "no-data", state.devices.size ? "live" : "no data yet");
        } else if (item.type === "error") {
          socket.detail = item.detail;
        } else if (!item.type) {
          onRecord(item);
        }
      }
      if (items.some((item) => !item.type)) {
        setStatus("live", "live");
        scheduleList();
      }
    });
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket || !state.token) return;
      if (event.code === 4401 || event.code === 4403) {
        tokenExpired(socket.detail || event.reason);
        return;
      }
      setStatus("unreachable", `server unreachable, retrying in ${state.retryMs / 1000} s`);
      setTimeout(() => { if (state.token) reload(); }, state.retryMs);
      state.retryMs = Math.min(state.retryMs * 2, 30000);
    });
  }

  // -- start ------------------------------------------------------------------------------------
  async function reload() {
    try {
      const [listing, units] = await Promise.all([api("/api/v1/devices"), api("/api/v1/signals")]);
      state.units = units;
      for (const found of listing.devices) {
        const entry = device(found.id, found.source);
        entry.lastSeen = Date.parse(found.last_seen);
        if (found.position) placeMarker(entry, [found.position.latitude, found.position.longitude]);
      }
      renderList();
      fitAll();
      state.trails.forEach((trail) => trail.remove());
      state.trails.clear();
      await Promise.all([...state.devices.values()].filter((entry) => state.markers.has(entry.id)).map(loadTrail));
      connectStream();
    } catch (error) {
      if (error instanceof AuthError) {
        tokenExpired(error.message);
      } else {
        setStatus("unreachable", `server unreachable, retrying in ${state.retryMs / 1000} s`);
        setTimeout(() => { if (state.token) reload(); }, state.retryMs);
        state.retryMs = Math.min(state.retryMs * 2, 30000);
      }
    }
  }

  function signIn(token) {
    state.token = token;
    $("#sign-in").hidden = true;
    $("#app").hidden = false;
    $("#sign-out").hidden = false;
    setStatus("connecting", "connecting");
    if (!state.map) initMap();
    state.map.invalidateSize();
    reload();
  }

  async function start() {
    if (typeof L === "undefined" || typeof uPlot === "undefined") {
      setStatus("error", "dashboard libraries missing: run make install");
      return;
    }
    try {
      state.config = await (await fetch("/dashboard/config.json")).json();
    } catch (error) {
      setStatus("unreachable", "server unreachable");
      return;
    }
    $("#sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("#token-input").value.trim();
      localStorage.setItem(TOKEN_KEY, token);
      signIn(token);
    });
    $("#sign-out").addEventListener("click", () => showSignIn());
    $("#search").addEventListener("input", renderList);
    $("#detail-close").addEventListener("click", () => {
      state.selected = null;
      $("#detail").hidden = true;
      $("#app").classList.remove("with-detail");
      state.map.invalidateSize();
      renderList();
    });
    $("#chart-field").addEventListener("change", (event) => {
      state.chartField = event.target.value;
      drawChart().catch(reportFailure);
    });
    $("#chart-range").addEventListener("change", () => drawChart().catch(reportFailure));
    setInterval(() => { if (state.token) renderList(); }, 5000);
    const token = takeToken();
    if (token) signIn(token); else showSignIn();
  }

  start();
})();
