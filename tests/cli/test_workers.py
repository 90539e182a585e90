"""``gateway serve --workers``: what a worker makes of the socket its parent hands it."""

from __future__ import annotations

import os
import socket

import uvicorn

from gateway.cli.workers import inherited_socket


def test_a_worker_serves_its_parents_socket_as_tcp() -> None:
    """uvicorn's ``fd=`` would call it a Unix socket, and the event loop would then leave
    Nagle's algorithm on for every accepted connection (~40 ms a response)."""
    with socket.socket() as parent:
        parent.bind(("127.0.0.1", 0))
        parent.listen()
        seen_by_uvicorn = uvicorn.Config(
            app="gateway.app:unused", fd=os.dup(parent.fileno())
        ).bind_socket()
        with seen_by_uvicorn, inherited_socket(os.dup(parent.fileno())) as ours:
            assert seen_by_uvicorn.family == socket.AF_UNIX  # why the worker does not use fd=
            assert ours.family == socket.AF_INET and ours.type == socket.SOCK_STREAM
            assert ours.getsockname() == parent.getsockname()
