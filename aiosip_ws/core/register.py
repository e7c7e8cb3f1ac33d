"""REGISTER as data (RFC 3261 §10): what a registrar's answer says about our bindings."""
from __future__ import annotations

from ..errors import SIPParseError
from .codec import SIPMessage
from .sipuri import NameAddr

__all__ = ['bindings_of', 'granted_expires']


def bindings_of(response: SIPMessage) -> list[str]:
    """The Contact values of a REGISTER response: every binding of the AOR (RFC 3261 §10.2.4)."""
    return response.get_all('Contact')


def granted_expires(response: SIPMessage, contact_host: str | None, default: int) -> int:
    """Seconds the registrar granted our binding (RFC 3261 §10.2.4).

    Our binding is the Contact whose URI host is ``contact_host`` (a UA's random
    ``.invalid`` name is unique), or the first one when ``contact_host`` is None;
    its ``expires`` parameter wins, then the ``Expires`` header, then ``default``.
    """
    for value in bindings_of(response):
        try:
            contact = NameAddr.parse(value)
        except SIPParseError:
            continue
        if contact_host is None or contact.uri.host.lower() == contact_host.lower():
            expires = contact.param('expires')
            if expires and expires.isdigit():
                return int(expires)
            break
    header = (response.get('Expires') or '').strip()
    return int(header) if header.isdigit() else default
