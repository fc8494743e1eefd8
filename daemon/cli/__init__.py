"""``spotctl``: ``spotd.cli.main`` assembles the command groups, one module each."""
