"""Tesla vehicle listener: mTLS WebSocket, one session per vehicle, TLS trust store."""
