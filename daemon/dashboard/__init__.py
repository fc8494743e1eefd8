"""The web dashboard the daemon serves: jobs, preemptions, services, fleet and cost."""
