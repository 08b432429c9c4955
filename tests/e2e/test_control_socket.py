"""The supervisor's private control channel: drain and reload, over a real Unix socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowwatch_gateway.serving.control import request_drain, request_reload, serve_control_socket


@pytest.mark.anyio
@pytest.mark.parametrize("taken", [True, False])
async def test_reload_runs_the_callback_and_says_whether_it_was_taken(
    tmp_path: Path, taken: bool
) -> None:
    reloads: list[str] = []
    drained: list[str] = []

    async def drain() -> None:
        drained.append("drain")

    def reload() -> bool:
        reloads.append("reload")
        return taken

    path = str(tmp_path / "control.sock")
    server = await serve_control_socket(path, drain, reload)
    try:
        assert await request_reload(path) is taken
        assert await request_drain(path, within=5.0) is True
    finally:
        server.close()
        await server.wait_closed()
    assert reloads == ["reload"] and drained == ["drain"]


@pytest.mark.anyio
async def test_a_channel_without_reload_refuses_it(tmp_path: Path) -> None:
    async def drain() -> None:
        return None

    path = str(tmp_path / "control.sock")
    server = await serve_control_socket(path, drain)
    try:
        assert await request_reload(path) is False
    finally:
        server.close()
        await server.wait_closed()
