"""``require_*``: the row, or NotFound with a message naming what is missing.

``get_*`` answers None for a missing row; ``require_*`` is for callers to whom a missing row is
an error, so they need neither an ``assert`` nor a None branch. Both on Store and AsyncStore.
"""

from __future__ import annotations

from typing import Any

import pytest

from spotd.store import AsyncStore, NotFound, Store
from tests.factories import intent

# (require method, the get method it mirrors, a key nothing has, the NotFound message)
MISSING = [
    ("require_job", "get_job", 404, "no job 404"),
    ("require_attempt", "get_attempt", "j4-a4", "no attempt j4-a4"),
    ("require_instance", "get_instance", "j4-a4-n0", "no instance j4-a4-n0"),
    ("require_service", "get_service", 404, "no service 404"),
    ("require_replica", "get_replica", "s4-r4", "no replica s4-r4"),
]


def _seed(store: Store) -> dict[str, Any]:
    """One row of each kind; returns the key of each, by require method."""
    job = store.create_job(
        name="j",
        task_id_prefix="p-j",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=1.0,
    )
    attempt = store.create_attempt(intent(job.id))
    svc = store.create_service(
        name="svc",
        spec_json="{}",
        spec_redacted_json="{}",
        lb_port=8000,
        lb_control_port=8001,
        lb_token="lb",
        target=1,
        now=1.0,
    )
    replica = store.create_replica(
        service_id=svc.id,
        version=1,
        provider="local",
        region="r",
        zone="z",
        instance_type="cpu.small",
        market="spot",
        price_per_hour=0.01,
        port=9000,
        token="rt",
        now=1.0,
    )
    return {
        "require_job": job.id,
        "require_attempt": attempt.id,
        "require_instance": f"j{job.id}-a1-n0",
        "require_service": svc.id,
        "require_replica": replica.key,
    }


@pytest.mark.parametrize(("require", "get", "missing", "message"), MISSING)
def test_require_returns_the_row_or_raises_not_found(
    store: Store, require: str, get: str, missing: Any, message: str
) -> None:
    key = _seed(store)[require]
    row = getattr(store, require)(key)
    assert row is not None and row == getattr(store, get)(key)
    assert getattr(store, get)(missing) is None
    with pytest.raises(NotFound) as err:
        getattr(store, require)(missing)
    assert str(err.value) == message
    assert isinstance(err.value, LookupError)  # NotFound is a LookupError too


@pytest.mark.parametrize(("require", "get", "missing", "message"), MISSING)
async def test_async_require_returns_the_row_or_raises_not_found(
    store: Store, require: str, get: str, missing: Any, message: str
) -> None:
    key = _seed(store)[require]
    astore = AsyncStore(store)
    try:
        assert await getattr(astore, require)(key) == await getattr(astore, get)(key)
        with pytest.raises(NotFound, match=f"^{message}$"):
            await getattr(astore, require)(missing)
    finally:
        await astore.close()


def test_async_store_offers_every_public_store_method() -> None:
    """Nothing to keep in step by hand: each public Store method has its coroutine twin."""
    public = {n for n in dir(Store) if not n.startswith("_") and callable(getattr(Store, n))}
    public -= {"open", "close"}  # AsyncStore's own: it owns the store thread's lifecycle
    missing = {n for n in public if not hasattr(AsyncStore, n)}
    assert missing == set()
