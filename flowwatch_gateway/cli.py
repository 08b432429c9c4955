"""The `flowwatch-gateway` command.

Each subcommand is one entry in SUBCOMMANDS: a function that adds its parser to the
subparsers and sets `run` (args -> exit status) as the parser default. A new command
is a new function and a new entry; dispatch does not change.

The demo (`demo`, `subsystem`) has its own command, `flowwatch-demo`
(flowwatch_gateway/demo/cli.py): a deployed gateway never imports the demo package.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from flowwatch_gateway.config import (
    SETTINGS,
    ConfigError,
    GatewayConfig,
)

EXIT_USAGE = 2


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_serve_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Every flag overrides the environment variable named "
        "in its help; durations use Go syntax (1m30s, 500ms).",
    )
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=_flag_dest(setting.flag),
            default=None,
            metavar="VALUE",
            help=f"{setting.help} (env {setting.env}, default {setting.default!r})",
        )
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    flags = {setting.flag: getattr(args, _flag_dest(setting.flag)) for setting in SETTINGS}
    try:
        config = GatewayConfig.from_sources(os.environ, flags)
        if config.policy_file is not None:
            # A bad policy stops start-up here; later bad edits keep the last good one.
            from flowwatch_gateway.access.policy import PolicyFile

            PolicyFile(config.policy_file)
    except ConfigError as exc:
        print(f"flowwatch-gateway serve: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from flowwatch_gateway.serving.server import configure_logging, serve

    configure_logging(config.log_level, config.log_format)
    return serve(config)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    add_serve_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowwatch-gateway",
        description="One FlowWatch API in front of many workflow subsystems.",
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
