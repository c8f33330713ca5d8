"""Two deepening schedules of the core DP raced on two cores, with one answer whatever the timing.

The deepening (:func:`mckp.solve_deepening`) proves the optimum in the first round whose target lies at or
below it; which first target is fastest depends on where the optimum lies, which nothing cheap predicts. On a
machine with two cores, ``auto`` runs two schedules at once: this process the usual one (first target
gap/16 below the LP bound), a forked child the one between (gap/(16/sqrt 2), then twice as far after each
round, as the usual one does). The child reports the start of each round and its answer over a pipe.

Any round that reaches its target is a proven optimum, but two optima may differ where gains tie (exactly, or
within rounding). So the answer is always the one a fixed rule picks, not the first to arrive: the first
proving round in the order this process's round 1, the child's round 1, this process's round 2, the child's
round 2, ... Each schedule on its own is deterministic, so this is too. A proof is taken as soon as every round
before it in that order has ended without one: the child's round k once this process has begun its round
k + 1 (this process then stops its own search at its next DP layer), this process's round k once the child has
begun its round k (until then it waits). A schedule that fails (state or memory limit, or the time limit)
leaves the answer to the other; with ``--time-limit``, a proof this process holds when the deadline passes is
taken as it is. The child writes nothing but its reports and ends with ``os._exit``; it is killed and reaped
as soon as the answer is known, also when this process is interrupted.

Only on Linux (``fork`` there is safe for a child that runs numpy alone; macOS's system libraries are not), two or more cores are usable, no other Python thread runs (forking a
threaded process can deadlock the child), the core is large enough for the race to pay
(:data:`MIN_CORE_LAYERS`) and the caller allows more than one thread (``--threads 1`` turns it off).
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import warnings
from dataclasses import dataclass, replace

from . import mckp

#: the child's first target lies gap / SECOND_START below the bound: halfway, geometrically, between the usual
#: schedule's first two targets
SECOND_START = mckp.DEEPENING_START / math.sqrt(2)
#: below this many core layers (after the presolve's fixing) one schedule ends in milliseconds: no second process
MIN_CORE_LAYERS = 300
_HEADER = struct.Struct("<Q")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_race(pre: mckp.Presolve, threads: int | None) -> bool:
    """Whether :func:`solve_deepening_raced` would fork for this presolve under ``threads``."""
    return ((threads is None or threads >= 2) and sys.platform.startswith("linux") and usable_cores() >= 2
            and lone_thread() and pre.core_layers >= MIN_CORE_LAYERS)


def lone_thread() -> bool:
    """No other Python thread runs (one holding a lock at the fork would leave it held in the child)."""
    return threading.active_count() == 1


@dataclass
class _Schedule:
    """What is known of one schedule: how many rounds it has begun, and how it ended."""

    rounds: int = 0
    ended: bool = False
    proved: int | None = None  # the round whose answer is a proof
    answer: tuple | None = None  # the child's: (CoreResult, trial incumbent, its value, trial kept)


class _ParentWatch:
    """The parent's ``watch``: counts its own rounds, reads the child's reports, stops once the child's
    proof is the answer."""

    def __init__(self, fd: int):
        self.fd, self.me, self.other = fd, _Schedule(), _Schedule()

    def round(self) -> None:
        self.me.rounds += 1

    def stop(self) -> bool:
        self.poll(0.0)
        return self.other.proved is not None and self.me.rounds > self.other.proved

    def poll(self, timeout: float | None) -> None:
        """Read every report the child has written (waiting up to ``timeout`` seconds for the first)."""
        while not self.other.ended and select.select([self.fd], [], [], timeout)[0]:
            timeout = 0.0
            message = _read_message(self.fd)  # None: the child died without its answer
            kind = None if message is None else message[0]
            self.other.ended = kind != "round"
            if kind == "round":
                self.other.rounds += 1
            elif kind == "proved":
                self.other.proved, self.other.answer = self.other.rounds, message[1:]


class _ChildWatch:
    def __init__(self, fd: int):
        self.fd = fd

    def round(self) -> None:
        _write_message(self.fd, ("round",))

    @staticmethod
    def stop() -> bool:
        return False


def solve_deepening_raced(problem, pre: mckp.Presolve, *, deadline: float | None,
                          threads: int | None = None) -> tuple[mckp.CoreResult, mckp.Presolve, bool]:
    """:func:`mckp.solve_deepening` on ``pre``, raced against the second schedule where :func:`can_race`;
    returns the answer, the presolve it was proven against, and whether a second process ran."""
    if not can_race(pre, threads):
        return (*mckp.solve_deepening(problem, pre, deadline=deadline), False)
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # numpy's BLAS threads are native and idle: the child never calls BLAS
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its schedule, its reports, nothing else
        code = 1
        try:
            os.close(read_fd)
            core, trial = mckp.solve_deepening(problem, pre, deadline=deadline, start=SECOND_START, watch=_ChildWatch(write_fd))
            if core.choice is None:
                _write_message(write_fd, ("failed", core.reason))
            else:
                kept = trial.kept
                if isinstance(kept, mckp.Kept) and kept.padded is pre.padded:  # the mask alone (the parent has the matrix)
                    kept = kept.mask
                _write_message(write_fd, ("proved", core, trial.incumbent, trial.incumbent_value, kept))
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        watch = _ParentWatch(read_fd)
        core, trial = mckp.solve_deepening(problem, pre, deadline=deadline, watch=watch)
        me, other = watch.me, watch.other
        if core.reason == mckp.STOPPED:
            return _child_answer(pre, other)
        # this process's proof in round k stands once the child has begun round k without a proof before it; where
        # this schedule failed, the child's proof (if it finds one) is the answer
        mine = me.rounds if core.choice is not None else None
        while not other.ended and (mine is None or other.rounds < mine):
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                break
            watch.poll(left)
        if other.proved is not None and (mine is None or other.proved < mine):
            return _child_answer(pre, other)
        return core, trial, True
    finally:
        os.close(read_fd)
        _end(pid)


def _child_answer(pre: mckp.Presolve, other: _Schedule):
    core, incumbent, value, kept = other.answer
    if not isinstance(kept, tuple):  # a mask over the presolve's matrix, which the child shared
        kept = mckp.Kept(pre.padded, kept)
    return core, replace(pre, incumbent=incumbent, incumbent_value=value, kept=kept), True


def _end(pid: int) -> None:
    """Kill the child (if it still runs) and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# the reports are length-prefixed pickles over a raw pipe: what multiprocessing.connection does, without the 17 ms
# of imports it adds to every raced solve (the 50,000-layer process is timed against a 2 s target)
def _write_message(fd: int, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_message(fd: int):
    """One message, or None at the end of the pipe (also one cut short)."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(fd, _HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
