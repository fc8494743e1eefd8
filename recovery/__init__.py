"""spotd.recovery: pure placement and recovery decisions.

- ``placement``: every feasible placement of a resource request, ranked by expected cost;
- ``history``: zone events and what they imply (blocking penalties, preemption risk);
- ``strategies``: where a job runs next (EAGER_NEXT_REGION, FAILOVER, DEADLINE), backoff;
- ``restarts``: restart or fail after a user-program failure;
- ``detection``: one verdict per node from agent reports, provider listings and the clock.

Nothing here does I/O, reads the clock or draws random numbers: time (``now``) and jitter
come in as arguments, and only ``spotd.types`` is imported from the daemon.
"""
