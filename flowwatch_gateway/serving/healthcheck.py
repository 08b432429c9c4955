"""Container HEALTHCHECK: GET /healthz on the address the gateway is configured with.

    python -m flowwatch_gateway.serving.healthcheck     # exit 0 when healthy, 1 otherwise

Reads the same GATEWAY_* variables as the server, so a changed GATEWAY_ADDR or TLS
setting does not leave the probe knocking on the wrong door. The certificate is not
verified (the probe talks to this very process over loopback). With mTLS
(GATEWAY_TLS_CLIENT_CA) the server demands a client certificate this probe does not
have: use an orchestrator probe on /healthz with a client certificate instead.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request

from flowwatch_gateway.config import ConfigError, GatewayConfig

TIMEOUT_S = 2.0


def probe_url(config: GatewayConfig) -> str:
    host = config.host if config.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.tls_enabled else "http"
    return f"{scheme}://{host}:{config.port}/healthz"


def main() -> int:
    try:
        config = GatewayConfig.from_env()
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    context = ssl._create_unverified_context() if config.tls_enabled else None
    try:
        with urllib.request.urlopen(probe_url(config), timeout=TIMEOUT_S, context=context) as r:
            return 0 if r.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {probe_url(config)}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
