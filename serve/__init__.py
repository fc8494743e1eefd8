"""spotd.serve: the pure decisions of services (autoscaler, spot hedging, replica states).

For SkyPilot users, the SDK's blocking service calls are also reachable here —
``spotd.serve.up(task, name)``, ``status``, ``update``, ``down``, ``logs`` — through a lazy
forwarder to ``spotd.sdk.serve``. The decision modules themselves never import the SDK (see
tests/test_layers.py, which allows this one forwarder by name).
"""

from __future__ import annotations

from typing import Any

_SDK_NAMES = frozenset({"up", "status", "update", "down", "logs"})


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from spotd.sdk import serve as sdk_serve  # the public face only; decisions stay pure

        return getattr(sdk_serve, name)
    raise AttributeError(f"module 'spotd.serve' has no attribute {name!r}")
