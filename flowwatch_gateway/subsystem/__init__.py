"""The subsystem SDK: what a Python service imports to join a FlowWatch gateway.

One concept per module: `backoff` (reconnect delays), `options` (what the author
configures and the states reported back), `describe` (what is announced, read from
the local FlowWatch API) and `client` (the Register stream and the entry points).
Import the public names from `flowwatch_gateway` itself.
"""

__all__: list[str] = []
