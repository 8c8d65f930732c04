#!/usr/bin/env sh
# Regenerate the committed Python code for Tesla's telemetry protos.
#
# The .proto files in src/fleetgate/protocols/tesla/proto/ are the source of truth; the
# *_pb2.py modules and *_pb2.pyi stubs next to them are generated and committed so a plain
# `pip install` needs no protoc. The protos import only google/protobuf/timestamp.proto, so
# the generated modules have no cross-imports to rewrite.
#
# Usage: scripts/gen_tesla_protos.sh   (uses .venv/bin/python if present: grpcio-tools and
# mypy-protobuf come from the dev extras)
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PROTO_DIR=src/fleetgate/protocols/tesla/proto
# protoc-gen-mypy lives next to the interpreter
PATH="$(dirname "$PY"):$PATH"
export PATH
rm -f "$PROTO_DIR"/*_pb2.py "$PROTO_DIR"/*_pb2.pyi
"$PY" -m grpc_tools.protoc -I "$PROTO_DIR" \
    --python_out="$PROTO_DIR" --mypy_out="$PROTO_DIR" \
    "$PROTO_DIR"/*.proto
"$PY" -m grpc_tools.protoc --version
