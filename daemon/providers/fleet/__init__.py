"""The fleet provider: instances as in-process records, for scale benchmarks, chaos and tests.

One process (``python -m spotd.providers.fleet``, ``spotd.providers.fleet.server``) plays a
cloud and every agent on it: instances are records with launch latency, preemptions and notices
from a rate or a spot trace (``model``, ``trace``), and their agents are one asyncio task group
that reports over the daemon's real agent API (``agents``). The daemon reaches it through
``FleetProvider`` (``provider``), as it reaches EC2 through the AWS provider.
"""

from spotd.providers.fleet.catalog import PROVIDER_NAME, fleet_catalog
from spotd.providers.fleet.provider import FleetProvider

__all__ = ["PROVIDER_NAME", "FleetProvider", "fleet_catalog"]
