"""Calls nobody takes go to a voicemail.

    VOICEMAIL_URI=sip:voicemail@example.com NO_ANSWER_SECONDS=4 \\
        aiosip-ws serve --app examples/routing/voicemail.py

``VOICEMAIL_URI``: the address-of-record the voicemail registers at serve as (a bot such
as ``aiosip-ws answer --record``); ``NO_ANSWER_SECONDS`` (default 20): how long a call
rings before it goes there.  A call to a user who does not answer in time, is busy
(486, 600) or is not registered (404, 480) goes to the voicemail; the voicemail's To is
still the user called.  Any other failure, and a voicemail that fails too, reaches the
caller as it is; a caller who hangs up first gets 487 (the app is not asked).
"""
import os

from aiosip_ws.serve.routing import Registered, Relay, Request, Response, aor_key

VOICEMAIL = os.environ.get('VOICEMAIL_URI', '')
if not VOICEMAIL:
    raise RuntimeError('set VOICEMAIL_URI to the address-of-record of the voicemail')
VOICEMAIL_AOR = aor_key(VOICEMAIL)
NO_ANSWER_SECONDS = float(os.environ.get('NO_ANSWER_SECONDS', '20'))

#: the failures that send a call to the voicemail: not registered, no answer, busy
TO_VOICEMAIL = {404, 408, 480, 486, 600}


async def on_request(request: Request) -> Relay | None:
    if request.method != 'INVITE' or request.uri.user is None or \
            aor_key(request.uri) == VOICEMAIL_AOR:
        return None                                   # serve's own routing
    # the user's devices, all at once, for NO_ANSWER_SECONDS (then CANCELled: 408)
    return Relay(Registered(request.uri.aor, timeout=NO_ANSWER_SECONDS))


async def on_failure(request: Request, response: Response) -> Relay | None:
    if response.attempt == 1 and response.status in TO_VOICEMAIL and \
            aor_key(request.uri) != VOICEMAIL_AOR:
        return Relay(Registered(VOICEMAIL))
    return None                                       # the caller gets the response
