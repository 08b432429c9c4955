"""`python -m flowwatch_gateway.demo`: the same as the `flowwatch-demo` command."""

import sys

from flowwatch_gateway.demo.cli import main

sys.exit(main())
