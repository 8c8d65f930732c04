"""Generated protobuf code for Tesla's telemetry payloads (see scripts/gen_tesla_protos.sh)."""
