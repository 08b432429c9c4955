"""Subsystems joining the gateway: the registry's state, the Register stream, health.

Internal to the gateway; subsystems reach it only over GatewayService.Register.
"""
