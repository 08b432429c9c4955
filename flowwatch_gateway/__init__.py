"""FlowWatch Gateway: one FlowWatch API in front of many workflow subsystems."""
