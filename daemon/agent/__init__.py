"""What runs on an instance: ``python -m spotd.agent INSTANCE_DIR`` (``main``).

The agent imports none of the daemon (the import contracts in ``.importlinter`` keep it so):
it speaks to it over HTTP only, with the ``AgentConfig`` the daemon wrote for it.
Checkpoint stores are in ``checkpoints``; the job's environment (an allowlist) in
``environment``; GPU telemetry in ``spotd.telemetry``.
"""
