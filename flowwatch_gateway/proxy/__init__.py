"""The UI-facing FlowWatch API, answered by proxying to the registered subsystems.

Internal to the gateway: upstream clients and discovery, run routing, fan-out,
paging and the merges of every kind of answer.
"""
