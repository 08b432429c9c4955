"""The in-memory FlowWatch demo subsystem: data set, engine and Connect app.

It is the demo the gateway shows and the fixture its tests proxy to.
"""
