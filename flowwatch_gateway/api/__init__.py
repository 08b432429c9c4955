"""The FlowWatch API as Python code, shared by every side that serves it.

An `EngineAdapter` (adapter.py) answers the FlowWatch rpcs, each with a `CallContext`
(context.py); `services` serves any adapter as the Connect API (validation,
deadlines, headers, error hygiene). The gateway's proxy is one adapter, the demo
engine another, a subsystem author's engine a third.
"""

__all__: list[str] = []
