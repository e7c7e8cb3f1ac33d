"""The open-file limit of ``aiosip-ws serve``: raised to the hard limit, and a connection
cap derived from it.

Every WebSocket connection holds one file descriptor; so does every TCP connection still
in its handshake, the listening sockets, the event loop's selector and self-pipe, the
standard streams and whatever else the process opens.  When ``accept()`` finds none
left, clients time out instead of being told to come back later.  So serve raises its
soft ``RLIMIT_NOFILE`` to the hard limit at start, and its default connection cap keeps
``max(64, 5 %)`` of the limit for everything that is not an established connection:
further handshakes get HTTP 503 with ``Retry-After`` while ``accept()`` still works.
"""
from __future__ import annotations

import logging

try:
    import resource
except ImportError:                                    # Windows: no RLIMIT_NOFILE to raise
    resource = None  # type: ignore[assignment]

__all__ = ['raise_open_file_limit', 'connection_cap', 'HEADROOM_MIN', 'HEADROOM_FRACTION']

logger = logging.getLogger(__name__)

#: descriptors kept for other uses than established connections: at least this many...
HEADROOM_MIN = 64
#: ...and at least this share of the limit
HEADROOM_FRACTION = 0.05


def raise_open_file_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; log both (INFO).

    Returns the soft limit in force afterwards, or None when there is none to go by
    (no ``resource`` module, or an unlimited soft limit).
    """
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:          # e.g. macOS: an unlimited hard limit
            logger.info('open file limit (RLIMIT_NOFILE): soft %s, hard %s; cannot raise the '
                        'soft limit: %s', _show(soft), _show(hard), exc)
        else:
            logger.info('open file limit (RLIMIT_NOFILE): soft %s raised to the hard limit %s',
                        _show(soft), _show(hard))
            soft = hard
    else:
        logger.info('open file limit (RLIMIT_NOFILE): soft %s, hard %s', _show(soft),
                    _show(hard))
    return None if soft == infinity or soft < 0 else int(soft)


def connection_cap(limit: int, listeners: int = 1) -> int:
    """Connections per listener that leave ``max(64, 5 %)`` of ``limit`` descriptors free."""
    headroom = max(HEADROOM_MIN, int(limit * HEADROOM_FRACTION))
    return max(1, (limit - headroom) // max(1, listeners))


def _show(value: int) -> str:
    return 'unlimited' if resource is not None and value == resource.RLIM_INFINITY else str(value)
