"""Call detail records: one JSON line per finished or failed call.

    CDR_FILE=calls.jsonl aiosip-ws serve --app examples/routing/cdr.py

``CDR_FILE``: the file the lines are appended to.  Each line, once the call ended::

    {"call_id": "...", "from": "sip:alice@example.com", "to": "sip:bob@example.com",
     "start": "2026-12-07T18:20:16.123Z", "answer": "2026-12-07T18:20:19.870Z",
     "end": "2026-12-07T18:21:02.004Z", "duration": 42.134, "status": 200,
     "ended_by": "caller", "node": null}

``answer`` is null and ``duration`` 0 for a call nobody answered; ``status`` is the
final status the caller got (the BYE's for an answered call; null when a party's
connection was lost instead); ``ended_by`` is ``caller``, ``callee`` or ``serve``.
Lines are written off the request path (a thread), each whole in one ``write()`` to a
file opened for appending, so that the processes of ``--workers`` can share the file.
"""
import asyncio
import datetime
import json
import os

from aiosip_ws.serve.events import CallChanged
from aiosip_ws.serve.routing import aor_key

CDR_FILE = os.environ.get('CDR_FILE', '')
if not CDR_FILE:
    raise RuntimeError('set CDR_FILE to the file the call records are appended to')

#: the events on_event gets
events = (CallChanged,)
_fd = -1


def _when(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime('%Y-%m-%dT%H:%M:%S.') + '%03dZ' % (moment.microsecond // 1000)


def _aor(value: str) -> str:
    try:
        return aor_key(value)
    except ValueError:
        return value


def record(event: CallChanged) -> bytes:
    """The line of an ended call."""
    answered = event.answered
    return (json.dumps({
        'call_id': event.call_id, 'from': _aor(event.caller), 'to': _aor(event.callee),
        'start': _when(event.started), 'answer': _when(answered), 'end': _when(event.time),
        'duration': round(event.time - answered, 3) if answered is not None else 0,
        'status': event.status, 'ended_by': event.ended_by, 'node': event.node,
    }) + '\n').encode('utf-8')


async def startup() -> None:
    global _fd
    _fd = os.open(CDR_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)


async def shutdown() -> None:
    os.close(_fd)


async def on_event(event: CallChanged) -> None:
    if event.change == 'ended':
        await asyncio.to_thread(os.write, _fd, record(event))
