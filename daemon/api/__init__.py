"""The daemon's HTTP API: ``spotd.api.app.make_app`` builds it; one module per resource.

Nothing is imported here, so a resource module can be imported without the whole API.
"""
