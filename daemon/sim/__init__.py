"""Offline policy evaluation: real spot traces replayed through spotd's own policy functions.

- ``traces``: the trace format (one JSON file per zone) and seeded windows;
- ``serve``: services — ``spotd.serve.hedge.plan_replicas`` against SpotHedge (reproduced from
  its artifact), round robin, even spread, all on-demand and a hindsight lower bound;
- ``jobs``: managed jobs — ``spotd.recovery.strategies.next_placement`` (EAGER_NEXT_REGION,
  FAILOVER, DEADLINE) against all on-demand and a hindsight lower bound;
- ``report``: rows for the table and JSON, and the PNG plot.

Nothing here re-implements a spotd policy: the simulators call the functions the daemon
calls and only play the part of the clouds (the traces) and of the controller (the history).
``spotctl simulate`` (``spotd.sim.cli``) is the command line.
"""
