"""A token bucket, with the time passed in (sans-I/O): ``rate`` tokens a second, at most
``burst`` saved up.  The listener's handshake rate and serve's request rate per
connection are each one of these."""
from __future__ import annotations

__all__ = ['TokenBucket']


class TokenBucket:
    """``take(now)`` is True while a token is left, refilling at ``rate`` per second up to
    ``burst``; a full bucket to begin with."""

    __slots__ = ('rate', 'burst', 'tokens', 'updated')

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        """Take one token at time ``now`` (seconds, any monotonic clock): False when none
        is left (nothing taken then)."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False
