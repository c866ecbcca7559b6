"""Kernel end of the JupyterLab panel protocol (comm target ``gradsight``).

``register()`` is called when gradsight is imported in an IPython kernel (and by
``%load_ext gradsight``); the panel then opens comms to this target. The first registration in
a kernel process also opens one comm from the kernel side, so a panel that is already open
connects while the very cell that imported gradsight is still training.
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import ProtocolError
from .hub import Hub
from .schema import PROTOCOL_VERSION, load_schema, parse_request, validate
from .server_log import log
from .session import Session
from .sources import KernelSources

__all__ = [
    "PROTOCOL_VERSION",
    "TARGET",
    "Hub",
    "ProtocolError",
    "Session",
    "load_schema",
    "parse_request",
    "register",
    "register_if_ipython",
    "validate",
]

TARGET = "gradsight"

_state: dict[str, Any] = {"hub": None, "manager": None}


def hub(shell: Any = None) -> Hub:
    """The process-wide hub (created on first use)."""
    if _state["hub"] is None:
        _state["hub"] = Hub(KernelSources(), shell)
    elif shell is not None and _state["hub"].shell is None:
        _state["hub"].shell = shell
    return _state["hub"]


def _comm_manager(ip: Any) -> Any:
    kernel = getattr(ip, "kernel", None)
    manager = getattr(kernel, "comm_manager", None)
    if manager is None and kernel is not None:
        import comm

        manager = comm.get_comm_manager()
    return manager


def _on_open(comm: Any, open_msg: dict[str, Any]) -> None:
    """A panel opened a comm; its open data is its `hello` request."""
    session = Session(comm, hub())
    content = open_msg.get("content") if isinstance(open_msg, dict) else None
    data = content.get("data") if isinstance(content, dict) else None
    if data:
        session.handle(data, open_msg.get("buffers"))


def _announce(h: Hub) -> None:
    """Open a comm from the kernel carrying `status`: an open panel accepts it at once."""
    import comm

    from . import payloads

    data, buffers = payloads.status(h.sources)
    c = comm.create_comm(target_name=TARGET, data=data, buffers=buffers or None)
    Session(c, h, confirmed=False)


def register(ip: Any = None) -> None:
    """Register the comm target on this IPython kernel; calling it again does nothing."""
    if ip is None:
        from IPython import get_ipython

        ip = get_ipython()
    manager = _comm_manager(ip)
    if manager is None:
        raise RuntimeError(
            "gradsight's panel needs an IPython kernel (ipykernel); got "
            f"{type(ip).__name__ if ip is not None else 'no IPython shell'}. "
            "In a notebook, run `import gradsight`."
        )
    if _state["manager"] is manager:
        return
    manager.register_target(TARGET, _on_open)
    _state["manager"] = manager
    h = hub(ip)
    try:
        _announce(h)
    except Exception as e:
        log.warning("could not announce gradsight to the front-end: %s: %s", type(e).__name__, e)


def register_if_ipython() -> bool:
    """Register when running inside an IPython kernel; a silent no-op anywhere else."""
    try:
        if "IPython" not in sys.modules:
            return False
        from IPython import get_ipython

        ip = get_ipython()
        if ip is None or getattr(ip, "kernel", None) is None:
            return False
        register(ip)
        return True
    except Exception as e:
        log.debug("not registering the gradsight comm: %s", e)
        return False
