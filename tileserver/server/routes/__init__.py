"""One module per protocol; each exposes ``routes(service) -> list[web.RouteDef]``."""
