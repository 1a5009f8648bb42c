"""Helpers shared by test modules in several folders (fixtures belong in a conftest.py instead).

Imported as `tests.support`, like `tests.images.fakes` or `tests.notify.receivers`: with
`--import-mode=importlib` pytest imports `tests` itself (a namespace package, no __init__.py)
before the first conftest.py or test module below it, so no sys.path change is needed.
"""

from __future__ import annotations

import socket


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on `address` that was free a moment ago (the kernel's pick, closed again).

    Nothing listens on it until someone binds it, so it also serves as a port that refuses.
    """
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port
