# fleetgate in a container, run as Tesla's fleet-telemetry image is: the configuration at
# /etc/fleet-telemetry/config.json, with the certificates it names (mount the folder:
# docker run -v /etc/fleet-telemetry:/etc/fleet-telemetry ...).
#
# The build runs the Makefile's install step, the one CI runs (`make wheel`: the same
# virtual environment set-up and vendored dashboard JavaScript as `make install`, then the
# wheel that tests/e2e/test_slim_install.py installs into a clean environment).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends make nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make wheel PYTHON=python3

FROM python:3.11-slim-bookworm
# The sink backends to install: all of them, or e.g. --build-arg EXTRAS=kafka,redis.
ARG EXTRAS=all
COPY --from=build /src/dist/ /tmp/dist/
RUN wheel="$(ls /tmp/dist/fleetgate-*.whl)" \
    && pip install --no-cache-dir "${wheel}[${EXTRAS}]" \
    && rm -rf /tmp/dist \
    && useradd --system --uid 10001 --home-dir /var/lib/fleetgate fleetgate \
    && mkdir -p /var/lib/fleetgate /etc/fleet-telemetry \
    && chown fleetgate /var/lib/fleetgate
USER 10001
# The data directory (spool, store, generated keys) and an API reachable from outside the
# container (its tokens still guard it).
ENV FLEETGATE_DATA_DIR=/var/lib/fleetgate \
    FLEETGATE_API__HOST=0.0.0.0
VOLUME /var/lib/fleetgate
# Tesla vehicles (mTLS), Teltonika trackers (TCP and UDP), the API and dashboard.
EXPOSE 4443 5027 5027/udp 8080
ENTRYPOINT ["fleetgate", "serve", "--config", "/etc/fleet-telemetry/config.json"]
