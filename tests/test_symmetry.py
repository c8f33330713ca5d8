"""Symmetry breaking in the presolved CBC/HiGHS model: ordering rows between layers with the same options whose
gains differ in step (solvers/ilp.py: exchange_order, ordered_start), checked against brute force and the
exchange argument itself."""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from layerlens_opt.allocation import Status
from layerlens_opt.manifest import parse_manifest
from layerlens_opt.problem import Constraints, ModelOptions, build_problem
from layerlens_opt.solvers import mckp, solve
from layerlens_opt.solvers.ilp import exchange_order, ordered_start

from conftest import brute_force, layer, manifest

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def few_shapes(seed, n_layers, shapes, ties, lo=0.0):
    """Layers of one or two shapes and kinds (so many share their options), utilities random, some exactly equal."""
    rng = random.Random(seed)
    pool = [(16, 16, "mlp"), (24, 8, "attention")][:shapes]
    layers = []
    for i in range(n_layers):
        d_in, d_out, kind = rng.choice(pool)
        s = round(rng.choice([0.5, 0.8]) if ties and rng.random() < 0.5 else rng.random() + 0.05, 3)
        layers.append(layer(f"l{i}", kind, d_in, d_out, block=i, ge=s, fi=s * 0.5, pe=s))
    m = parse_manifest(manifest(layers))
    opts = ModelOptions(methods=("lora", "adapter", "ia3", "none"), ranks={"lora": (1, 2, 4), "adapter": (1, 4)})
    _, top = build_problem(m, Constraints(budget=10**9), opts).cost_range()
    return build_problem(m, Constraints(budget=max(1, int(top * rng.uniform(0.2, 0.8))), min_utilization=lo), opts)


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(2, 7), shapes=st.sampled_from([1, 2]), ties=st.booleans())
def test_every_ordering_link_is_an_exchange_that_never_loses(seed, n, shapes, ties):
    problem = few_shapes(seed, n, shapes, ties)
    options = mckp.presolve(problem).options
    links = exchange_order(problem, options)
    for a, b in links:
        assert problem.option_cost[a].tolist() == problem.option_cost[b].tolist()
        assert problem.option_method[a].tolist() == problem.option_method[b].tolist()
        ga, gb = problem.option_gain[a], problem.option_gain[b]
        for i in range(len(a)):
            for j in range(i + 1, len(a)):  # the first layer at i, the second at the costlier j: swapping never loses
                assert ga[j] + gb[i] >= ga[i] + gb[j]


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(2, 7), shapes=st.sampled_from([1, 2]), ties=st.booleans(),
       lo=st.sampled_from([0.0, 0.7]), backend=st.sampled_from(["cbc", "highs"]))
def test_presolved_model_with_ordering_rows_keeps_the_optimum(seed, n, shapes, ties, lo, backend):
    problem = few_shapes(seed, n, shapes, ties, lo)
    best, _ = brute_force(problem)
    alloc = solve(problem, backend)
    if best is None:
        assert alloc.status == Status.INFEASIBLE
        return
    assert alloc.status == Status.OPTIMAL, alloc.message
    assert alloc.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert not alloc.violations


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(2, 8), ties=st.booleans())
def test_the_sorted_start_meets_the_ordering_rows_and_loses_nothing(seed, n, ties):
    problem = few_shapes(seed, n, 1, ties)
    pre = mckp.presolve(problem)
    keep = {o for opts in pre.kept for o in opts}
    links = exchange_order(problem, pre.options)
    rng = random.Random(seed)
    choice = tuple(rng.choice(opts) for opts in pre.options)  # any allocation of undominated options
    every = {o for opts in pre.options for o in opts}
    out = ordered_start(problem, choice, links, every)
    assert problem.value(out) >= problem.value(choice) - 1e-12
    for a, b in links:  # the rows: the first layer's position at least the second's
        pa = next(i for i, o in enumerate(a) if o in out)
        pb = next(i for i, o in enumerate(b) if o in out)
        assert pa >= pb
    kept_start = ordered_start(problem, pre.incumbent, links, keep)
    assert set(kept_start) <= keep and problem.value(kept_start) >= pre.incumbent_value - 1e-12


def test_layers_of_one_shape_form_one_chain_in_order_of_utility():
    utilities = [0.3, 0.9, 0.5, 0.9, 0.1]
    layers = [layer(f"l{i}", "mlp", 16, 16, block=i, ge=u, fi=u, pe=u) for i, u in enumerate(utilities)]
    problem = build_problem(parse_manifest(manifest(layers)), Constraints(budget=2_000))
    links = exchange_order(problem, mckp.presolve(problem).options)
    chain = [int(problem.option_layer[a[0]]) for a, _ in links] + [int(problem.option_layer[links[-1][1][0]])]
    assert chain == [1, 3, 2, 0, 4]  # utility descending, equal utilities by layer order
    assert all(np.array_equal(problem.option_cost[a], problem.option_cost[b]) for a, b in links)
