"""The deepening raced on two processes: the answer the fixed rule picks, whatever the timing; and the same optimum
as one process on real problems."""

import itertools
import os
import sys
import time
from dataclasses import replace

import pytest

from layerlens_opt.generate import synthetic
from layerlens_opt.manifest import parse_manifest
from layerlens_opt.problem import Constraints, build_problem
from layerlens_opt.solvers import SolverOptions, mckp, race, solve

from conftest import random_problem

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the race forks on Linux only")


@pytest.fixture
def racing(monkeypatch):
    """Race whatever the machine, the core's size and the threads earlier tests left (the rule depends on none)."""
    monkeypatch.setattr(race, "usable_cores", lambda: 2)
    monkeypatch.setattr(race, "lone_thread", lambda: True)
    monkeypatch.setattr(race, "MIN_CORE_LAYERS", 0)


def _no_children_left():
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _scripted(monkeypatch, outcomes, delays, crash=None):
    """Replace the core DP by a script: round k of the parent ("P") or the child ("C") sleeps delays[who][k]
    seconds (in steps, honouring ``stop``) and then proves its target (True) or misses it (False); its answer
    names the schedule and round. The last round of a schedule (against the incumbent) always answers."""
    parent = os.getpid()
    rounds = {"P": 0, "C": 0}

    def fake_core(problem, pre, *, target=None, stop=None, **_):
        who = "P" if os.getpid() == parent else "C"
        k = rounds[who]
        rounds[who] += 1
        if crash == (who, k):
            raise RuntimeError("scripted crash")
        end = time.perf_counter() + delays[who][min(k, len(delays[who]) - 1)]
        while time.perf_counter() < end:
            if stop is not None and stop():
                return mckp.CoreResult(None, 1, mckp.STOPPED)
            time.sleep(0.002)
        if target is None or outcomes[who][min(k, len(outcomes[who]) - 1)]:
            value = (pre.incumbent_value if target is None else target) + 1e-3
            return mckp.CoreResult(((who, k),), 1, value=value)
        return mckp.CoreResult(pre.incumbent, 1, value=pre.incumbent_value)

    monkeypatch.setattr(mckp, "solve_core", fake_core)


def _expected(outcomes):
    """The first proof in the order P0, C0, P1, C1, P2, C2 (round 2 is each schedule's last: always an answer)."""
    for k in range(3):
        for who in "PC":
            if k == 2 or outcomes[who][k]:
                return (who, k)


@pytest.fixture
def gapped():
    """A small real problem whose presolve is given a gap, so both schedules run three rounds: gap/16 (child
    gap/11.3), a fourfold step after a miss without a better allocation, then the round against the incumbent."""
    problem = random_problem(3, n_layers=6)
    pre = mckp.presolve(problem)
    return problem, replace(pre, bound=pre.incumbent_value + 1.0)


@pytest.mark.parametrize("outcomes", [
    {"P": p, "C": c} for p, c in itertools.product(itertools.product([False, True], repeat=2), repeat=2)
])
@pytest.mark.parametrize("slow", ["P", "C"])
def test_the_first_proof_in_round_order_is_the_answer_whoever_finishes_first(racing, monkeypatch, gapped, outcomes, slow):
    problem, pre = gapped
    delays = {"P": [0.0], "C": [0.0]}
    delays[slow] = [0.15]  # the other schedule finishes each round first
    _scripted(monkeypatch, outcomes, delays)
    core, trial, raced = race.solve_deepening_raced(problem, pre, deadline=None)
    assert raced
    assert core.choice == (_expected(outcomes),)
    # the child sends its fixed options as a mask over the presolve's matrix: read back over the same matrix
    assert isinstance(trial.kept, mckp.Kept) and trial.kept.padded is pre.padded
    assert all(set(k) <= set(o) for k, o in zip(trial.kept, pre.options)) and len(trial.kept) == problem.n_layers
    _no_children_left()


def test_a_crashed_child_leaves_the_answer_to_this_process(racing, monkeypatch, gapped):
    problem, pre = gapped
    outcomes = {"P": [False, False], "C": [True, True]}  # the child would have won round 1
    _scripted(monkeypatch, outcomes, {"P": [0.05], "C": [0.0]}, crash=("C", 0))
    core, _, raced = race.solve_deepening_raced(problem, pre, deadline=None)
    assert raced and core.choice == (("P", 2),)
    _no_children_left()


def test_a_failed_schedule_leaves_the_answer_to_the_other(racing, monkeypatch, gapped):
    problem, pre = gapped
    parent = os.getpid()
    real = mckp.solve_core

    def parent_overflows(problem, pre, **kw):
        if os.getpid() == parent:
            return mckp.CoreResult(None, 10**6, "the core's frontier grew past 400,000 states")
        return real(problem, pre, **kw)

    monkeypatch.setattr(mckp, "solve_core", parent_overflows)
    core, _, raced = race.solve_deepening_raced(problem, pre, deadline=None)
    assert raced and core.choice is not None
    _no_children_left()


def test_one_thread_or_a_small_core_runs_one_schedule(monkeypatch, gapped):
    problem, pre = gapped
    monkeypatch.setattr(race, "usable_cores", lambda: 2)
    monkeypatch.setattr(race, "lone_thread", lambda: True)
    assert not race.solve_deepening_raced(problem, pre, deadline=None, threads=1)[2]
    assert not race.solve_deepening_raced(problem, pre, deadline=None)[2]  # 6 layers: below MIN_CORE_LAYERS
    monkeypatch.setattr(race, "MIN_CORE_LAYERS", 0)
    monkeypatch.setattr(race, "usable_cores", lambda: 1)
    assert not race.solve_deepening_raced(problem, pre, deadline=None)[2]
    monkeypatch.setattr(race, "usable_cores", lambda: 2)
    monkeypatch.setattr(race, "lone_thread", lambda: False)
    assert not race.solve_deepening_raced(problem, pre, deadline=None)[2]  # another thread runs: no fork


def test_another_python_thread_means_no_fork():
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not race.lone_thread()
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("n,seed", [(4000, 1), (4000, 2), (6000, 0)])
def test_raced_and_single_schedules_prove_the_same_optimum(monkeypatch, n, seed):
    data = synthetic(n, seed=seed)
    problem = build_problem(parse_manifest(data), Constraints(budget=data["model"]["suggested_budget"]))
    monkeypatch.setattr(race, "usable_cores", lambda: 2)
    monkeypatch.setattr(race, "lone_thread", lambda: True)
    monkeypatch.setattr(race, "MIN_CORE_LAYERS", 50)
    one = solve(problem, "auto", SolverOptions(threads=1))
    two = solve(problem, "auto")
    assert "raced on 2 processes" in two.notes[-1] and "raced" not in one.notes[-1]
    assert one.status.value == two.status.value == "optimal"
    assert two.objective == pytest.approx(one.objective, rel=1e-12)
    assert not two.violations
    _no_children_left()
