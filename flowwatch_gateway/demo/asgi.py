"""The ASGI entry point of a demo subsystem process (`flowwatch_gateway.demo.asgi:app`).

pyvoy imports this inside the Envoy process, which only inherits environment
variables; `flowwatch-demo subsystem` has validated the settings and passed them on
(see process.py).
"""

from __future__ import annotations

import logging
import os

from flowwatch_gateway.demo.process import SubsystemSettings, create_subsystem_app
from flowwatch_gateway.serving.control import CONTROL_SOCKET_ENV
from flowwatch_gateway.serving.server import configure_logging

settings = SubsystemSettings.from_env(os.environ)
configure_logging(settings.log_level)
# httpx logs every readiness probe at INFO.
logging.getLogger("httpx").setLevel(logging.WARNING)
app = create_subsystem_app(settings, control_socket=os.environ.get(CONTROL_SOCKET_ENV) or None)
