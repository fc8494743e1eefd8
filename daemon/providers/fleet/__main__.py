"""``python -m spotd.providers.fleet``: the fleet process (``spotd.providers.fleet.server``)."""

from spotd.providers.fleet.server import main

main()
