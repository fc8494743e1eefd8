"""`python -m spotd.cli`: the same as `spotctl`."""

from spotd.cli.main import main

main()
