"""The Redis m3pipe talks to: connection URLs (auth, TLS, sockets) and reading a queue's backlog."""
