"""The run explorer: a local web page over a store's runs (``statemachine-agent ui --store runs.db``).

Needs the ``ui`` extra (``pip install 'statemachine-agent[ui]'``: Starlette, uvicorn, Jinja2). See
docs/observability.md, "The run explorer". :func:`serve` binds a socket and serves until interrupted;
:func:`open_socket` and :class:`Explorer` are its parts, for a caller (a test) serving the app its own way.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ..compile import CompiledWorkflow
from ..errors import StateMachineAgentError
from ..policies import Policy
from ..secrets import SecretCodec
from ._app import Explorer

__all__ = ["Explorer", "PortInUse", "allowed_hosts", "is_loopback", "new_token", "open_socket", "serve"]


class PortInUse(StateMachineAgentError, OSError):
    """The explorer's address is taken (another program listens there) or cannot be bound."""


def new_token() -> str:
    """A fresh token for the actions: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values a request to an explorer bound to ``host``:``port`` may carry."""
    names = {host, f"[{host}]" if ":" in host and not host.startswith("[") else host}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return frozenset(f"{n}:{port}" for n in names)


def open_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (``port`` 0: a free one); :class:`PortInUse` says
    why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise PortInUse(f"cannot listen on {host!r}: {exc}: give an address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise PortInUse(f"port {port} on {host} is in use by another program: pick another with --port "
                            "(or --port 0 for any free one)") from None
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def serve(store_path: str, workflows: Mapping[str, CompiledWorkflow[Any]], *, host: str = "127.0.0.1",
          port: int = 8000, token: str | None = None, secrets_codec: SecretCodec | None = None,
          poll: float = 1.0, policy: Policy[Any] | None = None, ready: Callable[[str], None] | None = None) -> None:
    """Serve the explorer of ``store_path`` until interrupted (Ctrl-C). ``ready`` is called with the
    address to open (holding the token) once the socket listens. ``policy``: what answers the
    decisions of the runs an action continues (default: the first enabled transition)."""
    import uvicorn  # noqa: PLC0415  (the ui extra; imported when serving)

    sock = open_socket(host, port)
    bound = sock.getsockname()[1]
    token = token or new_token()
    shown = f"[{host}]" if ":" in host else host
    explorer = Explorer(store_path, workflows, token=token, hosts=allowed_hosts(host, bound),
                        cookie=f"sma_explorer_{bound}", poll=poll, secrets=secrets_codec,
                        policy=policy)
    try:
        config = uvicorn.Config(explorer.app(), log_level="warning", access_log=False, lifespan="off",
                                server_header=False)
        server = uvicorn.Server(config)
        if ready is not None:
            ready(f"http://{shown}:{bound}/?token={token}")
        server.run(sockets=[sock])
    finally:
        sock.close()
        explorer.close()
