"""SipURI and NameAddr: what the registrar and relay ask of them on every request."""
import pytest

from aiosip_ws.core.grammar import parse_delta_seconds
from aiosip_ws.core.sipuri import NameAddr
from aiosip_ws.errors import SIPParseError


def test_header_parameters_by_name():
    """Names compare case-insensitively (RFC 3261 §7.3.1); a flag has no value but is
    present; of a repeated name the first counts; answers do not leak between values."""
    contact = NameAddr.parse('<sip:a@b.invalid;transport=ws>;Expires=60;+SIP.Instance='
                             '"<urn:uuid:1>";reg-id=1;ob;expires=90')
    assert contact.param('expires') == '60' and contact.param('EXPIRES') == '60'
    assert contact.param('+sip.instance') == '"<urn:uuid:1>"'
    assert contact.param('ob') is None and contact.has_param('OB')
    assert contact.param('q') is None and not contact.has_param('q')
    assert contact.param('transport') is None          # a URI parameter, not the header's
    other = NameAddr.parse('<sip:a@b.invalid>;q=0.5')
    assert other.param('q') == '0.5' and not other.has_param('expires')
    assert contact.with_param('expires', '30').param('expires') == '30'


def test_aor_is_the_same_text_each_time():
    uri = NameAddr.parse('"Bob" <sips:bob@Example.com:5061;transport=wss>').uri
    assert uri.aor == 'sip:bob@example.com'           # sips too; the host in lower case
    assert uri.aor is uri.aor
    assert NameAddr.parse('<sip:example.com>').uri.aor == 'sip:example.com'


@pytest.mark.parametrize('text, value', [('0', 0), ('300', 300), ('000300', 300),
                                         ('999999999', 999999999), ('4294967295', 4294967295),
                                         ('99999999999999', 4294967295), (' 60 ', 60)])
def test_delta_seconds(text, value):
    assert parse_delta_seconds(text) == value


@pytest.mark.parametrize('text', ['', '-1', '1.5', '٣', '６０', '60s'])
def test_delta_seconds_refused(text):
    with pytest.raises(SIPParseError):
        parse_delta_seconds(text)
