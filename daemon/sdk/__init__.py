"""The Python SDK of spotd (``import spotd`` exposes it; see ``docs/sdk.md``).

- ``spotd.sdk.jobs`` / ``spotd.sdk.serve``: blocking calls, thin wrappers over
- ``spotd.sdk.aio``: the async implementation, on the one API client ``spotd.sdk.client.Client``;
- ``spotd.sdk.types``: frozen records for results (``Job``, ``Attempt``, ``JobHandle``,
  ``ServiceStatus``, ``Replica``);
- ``spotd.sdk.errors``: exceptions to catch by type, mapped from the API's answers;
- ``spotd.sdk.connection``: where the daemon is (``Connection``), found as ``spotctl`` finds it.

Tasks are built with ``spotd.Task`` / ``spotd.Resources`` / ``spotd.Service``: the models of
``spotd.spec`` themselves, so a task built in Python validates exactly as its YAML would.
"""
