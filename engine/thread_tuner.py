"""The LM's intra-op thread count from its own step times: as many threads as the cores it actually gets.

Why: a step's threads form one OpenMP team, and every parallel region waits at its barrier for the slowest. When
another program holds a core (Ableton Live beside the bridge on a 2-core laptop, a busy CI host), the team's thread
on that core runs only in the scheduler's time slices, and the whole step crawls at that pace: on a 2-core host
with one core busy, 2 threads made half the steps per second of 1 (benchmarks/RESULTS.md). Which count is faster
depends on what else runs, and that changes during a set, so the tuner measures instead of guessing: now and then
it runs a few steps at a neighbouring count and keeps whichever stepped faster.

The comparison is of the mean step time over a handful of consecutive steps at each count, less the slowest one: a
mean, because what a stalled team costs is in its slow steps, which a median hides (benchmarks/RESULTS.md), less
the slowest so that a window's prefill landing among them does not decide it. A count must win by `MARGIN` in `CONFIRM` probes in a row to be
taken, so one unlucky probe does not flip the count back and forth. Probing a worse count costs its few steps once
every `PROBE_EVERY_S` to `MAX_PROBE_EVERY_S` of stepping, and a probe stops as soon as it cannot win.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Sequence

log = logging.getLogger(__name__)

PROBE_EVERY_S = 3.0  # seconds of stepping between probes, doubling after each probe lost in a row ...
MAX_PROBE_EVERY_S = 12.0  # ... up to this: a steady host is probed seldom, a change is still found within seconds
PROBE_STEPS = 8  # steps timed at each count for one comparison
MARGIN = 0.95  # a probe's typical step must be below this fraction of the current count's to win
CONFIRM = 2  # wins in a row that move the count (the next probe follows a win at once)
LOG_EVERY_S = 60.0  # switches are logged at INFO at most this often (DEBUG otherwise)
SETTLE_COMPARISONS = 3  # back-to-back comparisons a warm-up makes (`settle`)
LONG_IDLE_S = 5.0  # after a pause this long, one thread fewer is probed at once (the load may have changed)


def typical(seconds: Sequence[float]) -> float:
    """A step's typical time in a probe: the mean less the slowest step."""
    kept = sorted(seconds)[:-1]
    return sum(kept) / len(kept)


class ThreadTuner:
    """Chooses the LM's thread count in [1, most] from the durations of the steps it ran (`stepped`).

    The LM's thread asks `threads()` before each step and reports each finished step's duration with the count it
    ran at; a stretch without steps (`pause`) starts the comparison afresh, since the steps after it may be of
    another kind."""

    def __init__(self, most: int, clock: Callable[[], float] = time.perf_counter):
        self.most = max(1, most)
        self.current = self.most
        self.clock = clock
        self._recent: deque[float] = deque(maxlen=PROBE_STEPS)  # the latest steps at `current`
        self._probe: int | None = None  # the count being probed, while a probe runs
        self._probed: list[float] = []
        self._stepping = 0.0  # seconds of steps reported so far: probes are spaced in stepping time, not idle time
        self._next_probe_at: float | None = None  # on the `_stepping` clock
        self._down = False  # the last probe went down (probes alternate where both directions are possible)
        self._wins = 0  # probes of `_winner`'s count won in a row
        self._losses = 0  # probes lost in a row
        self._winner: int | None = None
        self._logged_at = float("-inf")
        self._quick = 0  # comparisons still to make back to back (`settle`)
        self._paused_at: float | None = None  # when the LM last stopped stepping (None: stepping)
        self._down_now = False  # probe one thread fewer as soon as there is something to compare with

    def threads(self) -> int:
        """The count the next step should run at."""
        if self._paused_at is not None:  # the first step after a pause
            self._down_now = self.current > 1 and self.clock() - self._paused_at >= LONG_IDLE_S
            self._paused_at = None
        if self._probe is None and self._due():
            if self._winner is not None:
                probe = self._winner
            elif self._down_now:
                probe = self.current - 1
            else:
                probe = self._neighbour()
            self._probe, self._probed, self._down_now = probe, [], False
        return self._probe if self._probe is not None else self.current

    @property
    def settled(self) -> bool:
        """Nothing to compare (a budget of one), or the counts have been compared and no comparison is under way."""
        return self.most == 1 or (self._next_probe_at is not None and self._probe is None and self._winner is None
                                  and self._quick == 0)

    def settle(self, comparisons: int = SETTLE_COMPARISONS) -> None:
        """Make the next `comparisons` comparisons back to back (a warm-up, before any request): on a loaded host one
        comparison can be a lucky one for the whole budget, and the first request then runs at the slow count until
        the next probe, seconds into it."""
        self._quick = comparisons if self.most > 1 else 0

    def stepped(self, seconds: float, threads: int) -> None:
        """A step took `seconds` at `threads` threads (steps at any other count than the one asked are ignored)."""
        self._stepping += seconds
        if self._probe is not None and threads == self._probe:
            self._probed.append(seconds)
            if len(self._probed) >= PROBE_STEPS or self._cannot_win():
                self._decide()
        elif self._probe is None and threads == self.current:
            self._recent.append(seconds)

    def pause(self) -> None:
        """The LM stopped stepping: the next steps start the comparison afresh (a probe under way is dropped). The
        next probe still waits for its stretch of stepping: idle time does not count, so a request that follows the
        warm-up's settling, or a jam's chunk after a wait, does not pay a probe in its first steps. One exception:
        after `LONG_IDLE_S` or more, one thread fewer is probed at once, since another program may have taken a core
        meanwhile (a warm-up on a host that was quiet then); that probe costs little even where it loses."""
        self._recent.clear()
        self._probe, self._probed = None, []
        self._paused_at = self.clock()

    def _due(self) -> bool:
        if self.most == 1 or len(self._recent) < PROBE_STEPS:
            return False
        if self._down_now:
            return True
        # The first probe runs as soon as there is something to compare with: a jam under load learns the count
        # within its first chunk.
        return self._next_probe_at is None or self._stepping >= self._next_probe_at

    def _neighbour(self) -> int:
        down, up = self.current - 1, self.current + 1
        if down < 1:
            return up
        if up > self.most:
            return down
        self._down = not self._down  # both possible: down and up by turns
        return down if self._down else up

    def _probe_after(self, seconds: float) -> None:
        """The next probe after `seconds` more of stepping (at once while `settle`'s comparisons remain)."""
        self._next_probe_at = self._stepping + (0.0 if self._quick else seconds)

    def _cannot_win(self) -> bool:
        """The probe has lost whatever its remaining steps take: even at no time at all, its typical step would not
        beat the current count's by MARGIN. Under load a step at the worse count can take 10-15x the current one
        (a team waiting for time slices), so a probe stops there instead of paying all PROBE_STEPS of them."""
        kept = sum(self._probed) - max(self._probed)
        return kept / (PROBE_STEPS - 1) >= MARGIN * typical(self._recent)

    def _decide(self) -> None:
        probe, now, probed = self._probe, typical(self._recent), self._probed
        won = len(probed) >= PROBE_STEPS and typical(probed) < MARGIN * now
        self._probe, self._probed = None, []
        self._wins = self._wins + 1 if won else 0
        self._winner = probe if won else None
        self._losses = 0 if won else self._losses + 1
        if self._quick:
            self._quick -= 1
        if not won:
            self._probe_after(min(MAX_PROBE_EVERY_S, PROBE_EVERY_S * 2 ** max(0, self._losses - 1)))
            return
        self._recent.clear()  # the next comparison is against fresh steps at the count it runs at
        if self._wins < CONFIRM:
            self._probe_after(0.0)  # confirm at once
            return
        self._wins, self._winner = 0, None
        # A count just taken won twice: the next probe waits the longest interval. A probe under load costs its
        # steps at the slow count, and a jam's first chunks (which follow the warm-up's settling) set its first bar.
        self._probe_after(MAX_PROBE_EVERY_S)
        level = logging.INFO if self.clock() - self._logged_at >= LOG_EVERY_S else logging.DEBUG
        if level == logging.INFO:
            self._logged_at = self.clock()
        log.log(level, "LM threads %d -> %d: a step took %.1f ms at %d against %.1f ms at %d (another program may "
                "be using the cores)", self.current, probe, typical(probed) * 1e3, probe, now * 1e3, self.current)
        self.current = probe
