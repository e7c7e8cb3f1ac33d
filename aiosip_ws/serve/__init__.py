"""``aiosip-ws serve``: the registrar (location service) and the relay."""
