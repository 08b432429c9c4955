"""The `flowwatch-demo` command (also `python -m flowwatch_gateway.demo`).

`demo` runs a gateway with three in-memory demo subsystems; `subsystem` runs one of
them. They live apart from `flowwatch-gateway` so that the production command never
imports the demo package. Dispatch works as in flowwatch_gateway/cli.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from flowwatch_gateway.config import LOG_LEVELS, parse_go_duration

EXIT_USAGE = 2
PROG = "flowwatch-demo"


def add_subsystem_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "subsystem",
        help="run one in-memory demo subsystem that registers with a gateway",
        description="Serve the in-memory FlowWatch demo API (HTTP/1.1 + h2c) and keep it "
        "registered with a gateway. The API key is read from --api-key or the "
        "FLOWWATCH_GATEWAY_API_KEY environment variable.",
    )
    parser.add_argument("--id", required=True, help="subsystem id, e.g. orders")
    parser.add_argument("--port", required=True, type=int, help="port to serve the API on")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--gateway", default="http://127.0.0.1:8091", help="gateway URL to register with"
    )
    parser.add_argument("--api-key", default=None, help="gateway API key (prefer the env var)")
    parser.add_argument("--seed", type=int, default=0, help="demo data seed")
    parser.add_argument(
        "--endpoint", default="", help="URL the gateway calls back (default http://HOST:PORT)"
    )
    parser.add_argument("--min-backoff", default="1s", help="first reconnect delay (Go duration)")
    parser.add_argument("--max-backoff", default="30s", help="largest reconnect delay")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.set_defaults(run=run_subsystem_command)


def run_subsystem_command(args: argparse.Namespace) -> int:
    from flowwatch_gateway.demo.process import API_KEY_ENV, SubsystemSettings, run_subsystem
    from flowwatch_gateway.serving.server import configure_logging

    try:
        settings = SubsystemSettings(
            subsystem_id=args.id,
            port=args.port,
            host=args.host,
            gateway_url=args.gateway,
            api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV, ""),
            seed=args.seed,
            endpoint=args.endpoint,
            min_backoff=parse_go_duration(args.min_backoff),
            max_backoff=parse_go_duration(args.max_backoff),
            log_level=args.log_level,
        )
    except ValueError as exc:
        print(f"flowwatch-demo subsystem: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    return run_subsystem(settings)


def add_demo_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a gateway with three demo subsystems (orders, payments, shipping)",
        description="Start the gateway and three in-memory demo subsystems as separate "
        "processes, wait until all have registered, and print how to point the FlowWatch "
        "UI at the gateway. Ctrl-C stops everything.",
    )
    parser.add_argument("--port", type=int, default=8091, help="gateway port")
    parser.add_argument("--host", default="127.0.0.1", help="gateway listen address")
    parser.add_argument("--api-key", default="", help="require this key from subsystems")
    parser.add_argument(
        "--ui-origin", default="http://localhost:5173", help="browser origin allowed by CORS"
    )
    parser.add_argument(
        "--subsystem-ports",
        default="9101,9102,9103",
        help="ports of the orders, payments and shipping subsystems (comma-separated)",
    )
    parser.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from flowwatch_gateway.demo.launcher import DemoSettings, run_demo

    try:
        settings = DemoSettings.from_args(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            ui_origin=args.ui_origin,
            subsystem_ports=args.subsystem_ports,
        )
    except ValueError as exc:
        print(f"flowwatch-demo demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_demo(settings)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    add_demo_command,
    add_subsystem_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The FlowWatch gateway demo: in-memory workflow subsystems that register "
        "with a gateway.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in SUBCOMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
