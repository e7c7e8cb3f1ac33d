"""The one version string of aiosip-ws (setup.cfg reads it from here)."""

__version__ = '0.2.0'
