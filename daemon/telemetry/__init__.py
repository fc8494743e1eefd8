"""What instances report about their hardware, shared by the agent that reads it and the daemon
that acts on it: GPU samples and the NVML adapter (``gpu``), the idle-GPU rule (``idle``).

It imports nothing of the daemon or the agent, so both may import it (the import contracts in
``.importlinter`` keep it so); pynvml is imported in ``gpu`` alone.
"""
