"""The async SDK: ``spotd.aio.jobs`` and ``spotd.aio.serve``, for code already in an event loop.

The blocking ``spotd.jobs`` / ``spotd.serve`` run exactly these coroutines on a private loop.
"""

from spotd.sdk.aio import jobs, serve

__all__ = ["jobs", "serve"]
