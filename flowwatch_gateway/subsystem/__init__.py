"""The subsystem SDK: what a Python service imports to join a FlowWatch gateway."""
