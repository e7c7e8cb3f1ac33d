"""Refuse calls and messages from a list of callers.

    BLOCKED=sip:spam@example.com,sip:robot@example.net \\
        aiosip-ws serve --app examples/routing/blocklist.py

``BLOCKED``: comma-separated addresses-of-record.  An INVITE or MESSAGE whose From is
one of them gets 403; everything else is routed as serve routes it.  Addresses compare
as RFC 3261 compares them: the host in any case, display names, parameters and tags
ignored (``"Spam" <sip:spam@EXAMPLE.com>;tag=1`` is ``sip:spam@example.com``).  The
From of a request from a user of ``--users`` is the one the user authenticated for.
"""
import os

from aiosip_ws.serve.routing import Reply, Request, aor_key

#: the blocked addresses-of-record, as aor_key writes them
BLOCKED = frozenset(aor_key(entry.strip())
                    for entry in os.environ.get('BLOCKED', '').split(',') if entry.strip())


async def on_request(request: Request) -> Reply | None:
    if request.method in ('INVITE', 'MESSAGE') and request.from_aor in BLOCKED:
        return Reply(403, 'Forbidden (caller blocked)')
    return None                           # serve's own routing
