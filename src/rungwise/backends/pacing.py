"""When the next request to an endpoint may start: a rate limit that adapts to 429s.

A :class:`RequestPacer` is shared by every request a backend has in flight (its worker tasks,
across ``generate`` calls). It combines three things:

* **a rate limit** (``rate_limit`` requests/s): starts are spaced ``1 / rate`` apart, a token
  bucket that holds one token, so a configured limit is never exceeded even in a burst;
* **adaptive backoff** (AIMD, as TCP adapts its window): a throttling answer (429, or 503 from
  an overloaded server) halves the rate from what was being achieved; each success then raises it
  by 1/16 of the new rate, so after 16 successes it is back where the 429s began, and past that it
  keeps creeping up (never above ``rate_limit``) until the server pushes back again. Only a
  request booked after the last cut can cut again: a burst of 429s from requests booked at the
  old rate is one signal, not eight;
* **a shared hold**: a ``Retry-After`` holds every start until then, not just the request that got it.

Example:
    >>> p = RequestPacer(rate_limit=2.0, clock=lambda: 100.0)
    >>> p.reserve(), p.reserve(), p.reserve()  # seconds each request waits: evenly spaced at 2/s
    (0.0, 0.5, 1.0)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

#: Successes after a cut that bring the rate back to where the 429s began.
RECOVERY_SUCCESSES = 16
#: The achieved rate is measured over the starts of the last RATE_WINDOW_S seconds, from the
#: first of them to now, and never over less than MIN_SPAN_S (a burst at the start of a run).
RATE_WINDOW_S = 2.0
MIN_SPAN_S = 0.25
#: The adaptive rate never goes below one request a minute.
MIN_RATE = 1 / 60


class RequestPacer:
    """Decides when each request may start; thread-safe, and free of any event loop, so one pacer
    serves every ``generate`` call of a backend.

    Args:
        rate_limit: requests per second at most (None: no limit until a 429 sets one).
        clock: a monotonic clock in seconds (tests pass a fake one).

    Example:
        >>> now = [0.0]
        >>> p = RequestPacer(clock=lambda: now[0])
        >>> p.reserve()  # no limit yet
        0.0
        >>> now[0] = 1.0
        >>> p.throttled(booked_at=0.0, retry_after_s=None)  # a 429: the rate halves from what was achieved
        True
        >>> p.rate  # one start in the last second: 1/s achieved, so 0.5/s from now on
        0.5
    """

    def __init__(self, rate_limit: float | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"rate_limit must be > 0, got {rate_limit}")
        self.ceiling = rate_limit
        self.rate = rate_limit  # the rate in force now (requests/s); None: unlimited
        self.cuts = 0  # how many times a 429 lowered the rate
        self._clock = clock
        self._step = 0.0  # additive increase per success, set by the last cut
        self._next = float("-inf")  # earliest start of the next request under the rate
        self._hold_until = float("-inf")  # a Retry-After holds every start until then
        self._last_cut = float("-inf")
        self._starts: deque[float] = deque(maxlen=512)
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Book the next start; returns the seconds to wait before sending (0: at once)."""
        with self._lock:
            now = self._clock()
            at = max(now, self._hold_until)
            if self.rate is not None:
                at = max(at, self._next)
                self._next = at + 1 / self.rate
            self._starts.append(at)
            return at - now

    def hold(self, seconds: float) -> None:
        """Start nothing for ``seconds`` (a server's ``Retry-After``)."""
        with self._lock:
            self._hold_until = max(self._hold_until, self._clock() + seconds)

    def throttled(self, booked_at: float, retry_after_s: float | None) -> bool:
        """A request that reserved its start at ``booked_at`` (:meth:`now` before :meth:`reserve`)
        was throttled (429/503).

        Holds every start for ``retry_after_s`` if the server gave one, and halves the rate
        unless the request was booked before the last cut, at the old rate. Returns True when
        the rate was cut.
        """
        if retry_after_s is not None:
            self.hold(retry_after_s)
        with self._lock:
            if booked_at < self._last_cut:
                return False
            now = self._clock()
            self._last_cut = now
            recent = [t for t in self._starts if now - t <= RATE_WINDOW_S] or [now]
            achieved = len(recent) / max(now - recent[0], MIN_SPAN_S)
            self.rate = max(MIN_RATE, 0.5 * min(self.rate or achieved, achieved))
            self._step = self.rate / RECOVERY_SUCCESSES
            # Nothing new starts until one interval at the new rate has passed.
            self._next = max(self._next, now + 1 / self.rate)
            self.cuts += 1
            return True

    def succeeded(self) -> None:
        """A request was answered: raise the rate a little (additive increase), up to the limit."""
        with self._lock:
            if self.rate is None or not self._step:
                return
            self.rate += self._step
            if self.ceiling is not None and self.rate >= self.ceiling:
                self.rate, self._step = self.ceiling, 0.0

    def now(self) -> float:
        """This pacer's clock (for ``booked_at``)."""
        return self._clock()
