"""adapter.convert.to_aiosip: the aiosip objects it builds from codec messages."""
from __future__ import annotations

from aiosip_ws import aiosip
from aiosip_ws.adapter.convert import aiosip_contact, to_aiosip
from aiosip_ws.core.codec import parse

REQUEST = ('MESSAGE sip:bob@example.com SIP/2.0\r\n'
           'Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n'
           'From: "Alice" <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
           'Call-ID: c1\r\nCSeq: 7 MESSAGE\r\nContact: <sip:alice@abc.invalid;transport=ws>\r\n'
           'Content-Type: text/plain\r\n\r\nhi')


async def test_details_are_what_aiosip_parses_and_each_message_gets_its_own():
    """From, To and Contact are parsed once per distinct text and handed out as copies:
    equal to aiosip's own parse, of its types, and never shared between messages (aiosip
    changes them: add_tag)."""
    first, second = to_aiosip(parse(REQUEST)), to_aiosip(parse(REQUEST))
    for name in ('From', 'To', 'Contact'):
        attribute = name.lower() + '_details'
        own = aiosip.Contact.from_header(first.headers[name])
        got = getattr(first, attribute)
        assert got == own and type(got) is type(own)
        assert type(got['uri']) is type(own['uri']) and type(got['params']) is type(own['params'])
        assert str(got) == str(own)
        assert got is not getattr(second, attribute)
    first.to_details.add_tag()                             # what a dialog does to it
    first.from_details['uri']['user'] = 'changed'
    assert 'tag' in first.to_details['params'] and 'tag' not in second.to_details['params']
    assert second.from_details['uri']['user'] == 'alice'
    assert 'tag' not in aiosip_contact('<sip:bob@example.com>')['params']
    assert first.cseq == 7 and first.method == 'MESSAGE' and first.payload == 'hi'


async def test_texts_aiosip_cannot_parse_still_convert():
    """D7: a From aiosip's regexes refuse (a flag parameter, IPv6) falls back to details
    built from the codec's parse, as before."""
    message = parse(REQUEST.replace('<sip:alice@abc.invalid;transport=ws>',
                                    '<sip:alice@[2001:db8::1];transport=ws;ob>'))
    converted = to_aiosip(message)
    assert converted.contact_details['uri']['user'] == 'alice'
