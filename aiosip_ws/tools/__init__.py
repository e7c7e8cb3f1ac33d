"""Applications on top of the library: the ``aiosip-ws`` command line, the probe
and the open-loop load generator."""
