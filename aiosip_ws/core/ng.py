"""rtpengine's ng control protocol as data (sans-I/O): bencode, and the datagrams.

An ng command is one UDP datagram: a cookie (any token without spaces, unique per
command), a space, and a bencoded dictionary (``{"command": "offer", "call-id": ...,
"sdp": ...}``).  The reply carries the same cookie and a dictionary whose ``result`` is
``ok``, ``pong``, ``error`` (with ``error-reason``) or ``warning`` (with ``warning``).
A client that gets no reply sends the same datagram again: rtpengine answers a cookie
it has seen from its cache, so a retransmitted ``offer`` is not a second offer.

Bencode (BitTorrent's): integers ``i42e``, byte strings ``4:spam``, lists ``l...e``,
dictionaries ``d...e`` with keys sorted.  Here byte strings decode to ``str`` (UTF-8,
undecodable bytes kept by ``surrogateescape``) since everything rtpengine sends is text.
Decoding is bounded: nesting depth and the datagram's own length.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import MediaRelayError

__all__ = ['bencode', 'bdecode', 'encode_command', 'decode_reply', 'MAX_DEPTH', 'MAX_DATAGRAM']

#: deepest nesting of lists and dictionaries a reply may have
MAX_DEPTH = 32
#: largest ng datagram (an offer with a large SDP stays far below)
MAX_DATAGRAM = 65507

Value = Any   # int | str | bytes | list[Value] | Mapping[str, Value]


def bencode(value: Value) -> bytes:
    """``value`` in bencode: int, str (UTF-8), bytes, bool (as 0/1), list/tuple, and
    mappings with string keys (sorted as bencode requires)."""
    out: list[bytes] = []
    _encode(value, out)
    return b''.join(out)


def _encode(value: Value, out: list[bytes]) -> None:
    kind = type(value)
    if kind is str:                     # the common kinds first, by exact type (no ABC check)
        data = value.encode('utf-8', 'surrogateescape')
        out.append(b'%d:' % len(data))
        out.append(data)
        return
    if kind is bytes:
        out.append(b'%d:' % len(value))
        out.append(value)
        return
    if kind is list:
        out.append(b'l')
        for item in value:
            _encode(item, out)
        out.append(b'e')
        return
    if kind is dict:
        try:
            keys = sorted(value)        # str keys: their UTF-8 sorts as they do
        except TypeError:
            keys = None
        if keys is not None and all(type(key) is str for key in keys):
            out.append(b'd')
            for key in keys:
                data = key.encode('utf-8')
                out.append(b'%d:' % len(data))
                out.append(data)
                _encode(value[key], out)
            out.append(b'e')
            return
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        out.append(b'i%de' % value)
    elif isinstance(value, str):
        data = value.encode('utf-8', 'surrogateescape')
        out.append(b'%d:' % len(data))
        out.append(data)
    elif isinstance(value, (bytes, bytearray)):
        out.append(b'%d:' % len(value))
        out.append(bytes(value))
    elif isinstance(value, (list, tuple)):
        out.append(b'l')
        for item in value:
            _encode(item, out)
        out.append(b'e')
    elif isinstance(value, Mapping):
        out.append(b'd')
        items = sorted(((k.encode('utf-8') if isinstance(k, str) else k, v)
                        for k, v in value.items()), key=lambda item: item[0])
        for key, item in items:
            if not isinstance(key, bytes):
                raise MediaRelayError('an ng dictionary key must be a string, not %r' % (key,))
            out.append(b'%d:' % len(key))
            out.append(key)
            _encode(item, out)
        out.append(b'e')
    else:
        raise MediaRelayError('cannot bencode %s for rtpengine: %r'
                              % (type(value).__name__, value))


def bdecode(data: bytes) -> Value:
    """The value ``data`` holds (exactly one, nothing after it); :class:`MediaRelayError`
    for anything else."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise MediaRelayError('bencode: %d byte(s) after the value' % (len(data) - end))
    return value


def _decode(data: bytes, at: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise MediaRelayError('bencode: nested deeper than %d' % MAX_DEPTH)
    if at >= len(data):
        raise MediaRelayError('bencode: the data ends early')
    lead = data[at:at + 1]
    if lead == b'i':
        end = data.find(b'e', at)
        if end < 0:
            raise MediaRelayError('bencode: an integer without its end')
        text = data[at + 1:end]
        if not text or not text.lstrip(b'-').isdigit():
            raise MediaRelayError('bencode: %r is not an integer' % text)
        return int(text), end + 1
    if lead == b'l':
        items: list[Value] = []
        at += 1
        while data[at:at + 1] != b'e':
            item, at = _decode(data, at, depth + 1)
            items.append(item)
        return items, at + 1
    if lead == b'd':
        result: dict[str, Value] = {}
        at += 1
        while data[at:at + 1] != b'e':
            key, at = _decode(data, at, depth + 1)
            if not isinstance(key, str):
                raise MediaRelayError('bencode: a dictionary key that is not a string')
            result[key], at = _decode(data, at, depth + 1)
        return result, at + 1
    if lead.isdigit():
        colon = data.find(b':', at)
        if colon < 0 or not data[at:colon].isdigit():
            raise MediaRelayError('bencode: a string without its length')
        size = int(data[at:colon])
        start = colon + 1
        if start + size > len(data):
            raise MediaRelayError('bencode: a string longer than the data')
        return data[start:start + size].decode('utf-8', 'surrogateescape'), start + size
    raise MediaRelayError('bencode: unexpected %r at byte %d' % (lead, at))


def encode_command(cookie: str, command: Mapping[str, Value]) -> bytes:
    """The datagram of ``command`` (its ``command`` key names it) under ``cookie``."""
    if not cookie or ' ' in cookie:
        raise MediaRelayError('an ng cookie is a token without spaces, not %r' % cookie)
    if 'command' not in command:
        raise MediaRelayError('an ng command needs its "command" key')
    data = cookie.encode('ascii') + b' ' + bencode(command)
    if len(data) > MAX_DATAGRAM:
        raise MediaRelayError('the ng %s command is %d bytes, more than a datagram holds'
                              % (command['command'], len(data)))
    return data


def decode_reply(data: bytes, *, brief: bool = False) -> tuple[str, dict[str, Value]]:
    """The cookie and the dictionary of a reply datagram; :class:`MediaRelayError` when it
    is not one.  ``brief``: only the reply's strings and integers (``result``,
    ``error-reason``...), its lists and dictionaries checked and skipped unbuilt (a
    ``delete``'s reply carries the call's whole statistics); a reply whose last entry is
    ``result`` ``ok``, as rtpengine writes a success, is ``{'result': 'ok'}`` unread."""
    cookie, space, body = data.partition(b' ')
    if not space or not cookie:
        raise MediaRelayError('an ng reply without a cookie')
    if brief and body.endswith(_BRIEF_OK) and body[:1] == b'd':
        # rtpengine adds "result" to a reply last (an error's "error-reason" after it): a
        # reply ending in result "ok" is a success, whatever statistics come before it
        return cookie.decode('ascii', 'replace'), {'result': 'ok'}
    if brief:
        reply: Value = _decode_brief(body)
    else:
        reply = bdecode(body)
    if not isinstance(reply, dict):
        raise MediaRelayError('an ng reply that is not a dictionary')
    return cookie.decode('ascii', 'replace'), reply


_BRIEF_OK = b'6:result2:oke'


def _decode_brief(data: bytes) -> dict[str, Value]:
    if data[:1] != b'd':
        raise MediaRelayError('an ng reply that is not a dictionary')
    result: dict[str, Value] = {}
    at = 1
    while data[at:at + 1] != b'e':
        key, at = _decode(data, at, 1)
        if not isinstance(key, str):
            raise MediaRelayError('bencode: a dictionary key that is not a string')
        if data[at:at + 1] in (b'l', b'd'):
            at = _skip(data, at)
        else:
            result[key], at = _decode(data, at, 1)
    if at + 1 != len(data):
        raise MediaRelayError('bencode: %d byte(s) after the value' % (len(data) - at - 1))
    return result


def _skip(data: bytes, at: int) -> int:
    """Where the value at ``at`` ends, nothing built (iterative: lists and dictionaries
    by their depth)."""
    depth, size = 0, len(data)
    while True:
        if at >= size:
            raise MediaRelayError('bencode: the data ends early')
        lead = data[at]
        if lead == 0x6c or lead == 0x64:                          # l, d
            depth += 1
            if depth > MAX_DEPTH:
                raise MediaRelayError('bencode: nested deeper than %d' % MAX_DEPTH)
            at += 1
            continue
        if lead == 0x65:                                          # e
            depth -= 1
            if depth < 0:
                raise MediaRelayError('bencode: unexpected end at byte %d' % at)
            at += 1
        elif lead == 0x69:                                        # i
            end = data.find(b'e', at)
            if end < 0:
                raise MediaRelayError('bencode: an integer without its end')
            at = end + 1
        elif 0x30 <= lead <= 0x39:
            colon = data.find(b':', at)
            if colon < 0 or not data[at:colon].isdigit():
                raise MediaRelayError('bencode: a string without its length')
            at = colon + 1 + int(data[at:colon])
            if at > size:
                raise MediaRelayError('bencode: a string longer than the data')
        else:
            raise MediaRelayError('bencode: unexpected %r at byte %d' % (data[at:at + 1], at))
        if depth == 0:
            return at
