# FlowWatch Gateway: one FlowWatch API in front of many workflow subsystems.
#   docker build -t flowwatch-gateway .
#   docker run -p 8091:8091 -e UI_ORIGIN=http://localhost:5173 flowwatch-gateway
# Configuration is by environment variable (GATEWAY_*, UI_ORIGIN); see the README.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowwatch_gateway ./flowwatch_gateway
# The official image's Python is built shared (libpython3.11.so), which pyvoy's
# Envoy process loads to run the app.
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway

WORKDIR /
USER gateway
EXPOSE 8091

# slim has no curl; the liveness probe is a few lines of Python.
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8091/healthz', timeout=2).status == 200 else 1)"]

CMD ["flowwatch-gateway", "serve", "--addr", ":8091"]
