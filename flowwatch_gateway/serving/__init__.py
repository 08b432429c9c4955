"""Running the gateway: the ASGI app, the servers that host it, probes and draining."""
