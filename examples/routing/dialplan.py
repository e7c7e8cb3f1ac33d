"""A dial plan: phone numbers go to a gateway, written as E.164.

    GATEWAY_URI=sip:127.0.0.1:5070 COUNTRY_CODE=49 \\
        aiosip-ws serve --app examples/routing/dialplan.py \\
        --listen ws://127.0.0.1:8080/ --listen udp://127.0.0.1:5060

``GATEWAY_URI``: the PBX or carrier gateway (a SIP URI, reached over UDP unless its
``transport`` says otherwise: serve needs a ``--listen`` of that transport);
``COUNTRY_CODE``: the digits a national number (one leading 0) is prefixed with.

A Request-URI whose user part is a phone number goes to the gateway, the number
normalised: the separators ``-``, ``.``, space, ``(`` and ``)`` removed; ``+`` kept;
``00`` becomes ``+``; one leading ``0`` becomes ``+`` and ``COUNTRY_CODE``; any other
number is left as it is.  Fewer than 6 digits is not a number (an extension: routed as
usual), nor is anything with letters.  ``;user=phone`` is kept.  Requests that need
credentials (``--users``) are challenged before the app sees them: a caller who has not
authenticated never reaches the gateway.
"""
import dataclasses
import os
import re
import urllib.parse

from aiosip_ws.core.sipuri import SipURI
from aiosip_ws.serve.routing import Relay, Request, Target

GATEWAY = SipURI.parse(os.environ.get('GATEWAY_URI') or 'sip:gateway.invalid')
if GATEWAY.host == 'gateway.invalid':
    raise RuntimeError('set GATEWAY_URI to the SIP URI of the gateway, e.g. sip:10.0.0.5:5060')
COUNTRY_CODE = os.environ.get('COUNTRY_CODE', '')
if not COUNTRY_CODE.isdigit():
    raise RuntimeError('set COUNTRY_CODE to the digits of the country code, e.g. 49')

_SEPARATORS = re.compile(r'[-.\s()]')
_NUMBER = re.compile(r'\+?[0-9]+')


def normalise(user: str) -> str | None:
    """The number in ``user`` as the gateway gets it, or None if it is no phone number."""
    number = _SEPARATORS.sub('', urllib.parse.unquote(user))
    if not _NUMBER.fullmatch(number) or len(number.lstrip('+')) < 6:
        return None
    if number.startswith('+'):
        return number
    if number.startswith('00'):
        return '+' + number[2:]
    if number.startswith('0'):
        return '+' + COUNTRY_CODE + number[1:]
    return number


async def on_request(request: Request) -> Relay | None:
    if request.method == 'REGISTER' or request.uri.user is None:
        return None
    number = normalise(request.uri.user)
    if number is None:
        return None                                   # not a number: serve's own routing
    phone = tuple(p for p in request.uri.params if p[0].lower() == 'user')
    target = dataclasses.replace(GATEWAY, user=number, params=GATEWAY.params + phone)
    return Relay(Target(str(target)))
