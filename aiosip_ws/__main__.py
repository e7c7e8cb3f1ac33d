"""``python -m aiosip_ws``: the same as the ``aiosip-ws`` command."""
import sys

from .tools.cli import main

sys.exit(main())
