# FlowWatch Gateway: one FlowWatch API in front of many workflow subsystems.
#   docker build -t flowwatch-gateway .
#   docker run -p 8091:8091 -e UI_ORIGIN=http://localhost:5173 flowwatch-gateway
# Configuration is by environment variable (GATEWAY_*, UI_ORIGIN); see the README.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_ADDR=:8091

WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowwatch_gateway ./flowwatch_gateway
# The official image's Python is built shared (libpython3.11.so), which pyvoy's
# Envoy process loads to run the app. The server extra brings the gateway's server
# (pyvoy, Starlette); the base package alone is the subsystem SDK.
RUN pip install ".[server]" \
    && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway

WORKDIR /
USER gateway
EXPOSE 8091

# The probe reads the same GATEWAY_* settings as the server (address, TLS).
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-m", "flowwatch_gateway.serving.healthcheck"]

# No flags here: flags would override the GATEWAY_* environment of the container.
CMD ["flowwatch-gateway", "serve"]
