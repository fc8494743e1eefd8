"""`python -m spotd.agent DIR`: the agent that runs on an instance (see spotd.agent.main)."""

from spotd.agent.main import main

main()
