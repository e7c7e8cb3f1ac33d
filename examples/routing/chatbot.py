"""A chatbot: what you send it comes back.

    ECHO_USER=echo aiosip-ws serve --app examples/routing/chatbot.py

A MESSAGE to ``sip:ECHO_USER@DOMAIN`` (``ECHO_USER``: ``echo`` by default; DOMAIN any
of serve's, or any at all when serve has none) is answered 200, then serve sends a
MESSAGE from that address back to the sender with the same text and content type.
Other requests are routed as usual.
"""
import os

from aiosip_ws.serve.routing import Reply, Request, Serve

ECHO_USER = os.environ.get('ECHO_USER') or 'echo'
_serve: Serve | None = None


async def startup(serve: Serve) -> None:
    global _serve
    _serve = serve


async def on_request(request: Request) -> Reply | None:
    uri = request.uri
    if request.method != 'MESSAGE' or uri.user != ECHO_USER or _serve is None or \
            (_serve.domains and uri.host.lower() not in _serve.domains):
        return None
    bot = 'sip:%s@%s' % (ECHO_USER, uri.host)
    # answered first; the echo goes once this hook returned (a task of serve's)
    _serve.spawn(_serve.send_message(bot, request.from_uri.aor, request.body,
                                     request.content_type or 'text/plain'))
    return Reply(200)
