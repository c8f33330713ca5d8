"""Does an allocation file say what it claims? Recomputed from its own fields and, when given, the manifest.

``integrity_failures(allocation, manifest=None)`` returns one sentence per
problem, each naming the layer and both values; empty means sound. ``validate``
prints them as FAILs; ``export`` and ``plot`` refuse an allocation that has
any; :func:`layerlens_opt.apply` checks :func:`usable_failures` (status and
totals) and then each layer's params against the model's own module shapes,
so a hand-edited rank or a foreign allocation cannot reach training.

Checked: the status (only optimal or feasible allocations carry a usable
answer); that it has layers; each layer's rank is possible for its method and
shape and its ``params`` equal the exact cost of method and rank on the layer's
shape (the manifest's shape when given, else the allocation's own
``in_features``/``out_features``); ``total_params`` and ``utilization`` equal
what the layers add up to; with a manifest, every manifest layer appears
exactly once, no other layer appears, and each method is one the layer accepts;
the layers of a tied group (the manifest's ``group`` fields and the allocation's
``constraints.tie_groups`` regex when a manifest is given, else the layers' own
``group`` fields) share one method and rank; the objective, bound and gap agree
with each other and a 'none' layer gains nothing; with a manifest, each layer's
utility and gain and the objective (pair terms included) are recomputed from the
manifest under the allocation's ``gain_model``, and each layer's block is the
manifest's (so tied blocks are checked on the manifest's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .methods import METHOD_NAMES, METHODS, param_cost

if TYPE_CHECKING:
    from .allocation import Allocation


def rank_problem(method: str, rank: int, d_in: int, d_out: int) -> str | None:
    """Why ``rank`` is impossible for ``method`` on a (d_in, d_out) layer, or None."""
    spec = METHODS[method]
    if not spec.ranked:
        fixed = spec.fixed_rank
        return None if rank == fixed else (f"rank {rank} with method {method} (must be {fixed})" if fixed == 0 else
                                           f"rank {rank} with {method} (one option per layer, reported as rank {fixed})")
    if rank < 1:
        return f"rank {rank} with {method} (must be at least 1)"
    cap = spec.rank_cap(d_in, d_out)
    if cap is not None and rank > cap:
        return f"{method} rank {rank} on a {d_in}x{d_out} layer (at most {cap})"
    return None


def _status_failures(allocation: Allocation) -> list[str]:
    if allocation.ok:
        return []
    return [f"status is {allocation.status.value!r}: the solve found no usable allocation ({allocation.message or 'no message'})"]


def _total_failures(allocation: Allocation) -> list[str]:
    """``total_params`` and ``utilization`` against what the layers add up to."""
    if not allocation.layers:
        return []
    out = []
    total = sum(l.params for l in allocation.layers)
    if allocation.total_params != total:
        out.append(f"total_params is {allocation.total_params!r} but its layers add up to {total:,}")
    budget, utilization = allocation.budget, allocation.utilization
    if abs(utilization - total / budget) > 1e-9:
        out.append(f"utilization is {utilization!r} but {total:,} of {budget:,} is {total / budget:.6g}")
    return out


def usable_failures(allocation: Allocation) -> list[str]:
    """The checks that need no shapes (what :func:`layerlens_opt.apply` checks before it looks at the
    model's modules): a usable status, and totals that are what the layers add up to."""
    return _status_failures(allocation) + _total_failures(allocation)


def accepted_methods(manifest) -> dict[str, frozenset[str]]:
    """Layer name -> every catalog method the manifest's layer accepts."""
    from .problem import ModelOptions, allowed_methods

    return allowed_methods(manifest, ModelOptions(methods=tuple(METHOD_NAMES)))


def integrity_failures(allocation: Allocation, manifest=None, accepted: dict[str, frozenset[str]] | None = None) -> list[str]:
    """``accepted``: :func:`accepted_methods` of the manifest, when the caller has it already."""
    out = _status_failures(allocation)
    layers = allocation.layers
    if not layers:
        out.append("the allocation has no layers")
        return out
    shapes: dict[str, tuple[int, int]] = {}
    allowed: dict[str, set[str]] = {}
    if manifest is not None:
        shapes = {l.name: (l.in_features, l.out_features) for l in manifest.layers}
        allowed = accepted if accepted is not None else accepted_methods(manifest)
        seen: dict[str, int] = {}
        for l in layers:
            seen[l.name] = seen.get(l.name, 0) + 1
        for name, count in seen.items():
            if name not in shapes:
                out.append(f"layer {name!r} is not in the manifest (an allocation for another model?)")
            elif count > 1:
                out.append(f"layer {name!r} appears {count} times")
        missing = [n for n in shapes if n not in seen]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            out.append(f"manifest layer(s) {', '.join(map(repr, missing[:3]))}{more} missing from the allocation")
    for l in layers:
        name, method, rank, params = l.name, l.method, l.rank, l.params
        dims = shapes.get(name)
        if dims is None and manifest is None and l.in_features and l.out_features:
            dims = (l.in_features, l.out_features)
        if dims is None:
            if manifest is None:
                out.append(f"layer {name!r} has no in_features/out_features to check its params against; pass --manifest")
            continue
        why = rank_problem(method, rank, *dims)
        if why:
            out.append(f"layer {name!r}: {why}")
            continue
        cost = param_cost(method, rank, *dims)
        if cost != params:
            out.append(f"layer {name!r}: params {params:,} but {method} rank {rank} on {dims[0]}x{dims[1]} costs {cost:,}")
        if allowed and name in allowed and method not in allowed[name]:
            out.append(f"layer {name!r}: method {method} is not one the layer accepts ({', '.join(sorted(allowed[name]))})")
    out += _group_failures(allocation, layers, manifest)
    out += _total_failures(allocation)
    out += _claim_failures(allocation, manifest)
    if manifest is not None:
        blocks = {l.name: l.block for l in manifest.layers}
        for l in layers:
            if l.name in blocks and l.block != blocks[l.name]:
                out.append(f"layer {l.name!r}: block {l.block!r} in the allocation but {blocks[l.name]!r} in the manifest")
    return out


def _claim_failures(allocation: Allocation, manifest) -> list[str]:
    """The objective, bound and gap against each other, a 'none' layer gains nothing, and with a manifest every gain
    and the objective recomputed from it (:func:`_recomputed_failures`)."""
    import math

    out = []
    for l in allocation.layers:
        if l.method == "none" and l.gain != 0:
            out.append(f"layer {l.name!r}: gain {l.gain!r} with method none (a layer left as it is gains 0)")
    objective, bound, gap = allocation.objective, allocation.bound, allocation.gap
    tol = 1e-9
    if objective is not None and bound is not None:
        if bound < objective - tol * max(1.0, abs(objective)):
            out.append(f"bound {bound!r} is below the objective {objective!r} (a bound is at least the allocation's objective)")
        elif gap is not None and math.isfinite(gap):
            from .allocation import gap_of

            want = gap_of(objective, bound)
            if abs(gap - want) > 1e-6 * max(1.0, abs(want)):
                out.append(f"gap {gap!r} but bound {bound!r} and objective {objective!r} give {want:.6g}")
    if manifest is not None and allocation.layers:
        out += _recomputed_failures(allocation, manifest)
    return out


#: the most per-layer gain/utility disagreements listed before "and N more"
_SHOWN = 3


def _recomputed_failures(allocation: Allocation, manifest) -> list[str]:
    """Each layer's utility and gain, and the objective with the manifest's pair terms, recomputed from the manifest
    under the allocation's ``gain_model`` (the defaults when an older allocation records none)."""
    import math

    from .errors import LayerlensError
    from .problem import recomputed_gains

    by_name = {l.name: l for l in allocation.layers}
    names = [l.name for l in manifest.layers]
    if len(by_name) != len(allocation.layers) or set(by_name) != set(names):
        return []  # named above (missing, unknown or repeated layers): nothing to recompute against
    if any(rank_problem(by_name[n].method, by_name[n].rank, l.in_features, l.out_features) for n, l in zip(names, manifest.layers)):
        return []
    model = allocation.gain_model
    under = "its gain_model" if model else "the default gain model (the allocation records no gain_model)"
    try:
        rows, pair_total = recomputed_gains(manifest, model, [(by_name[n].method, by_name[n].rank) for n in names])
    except LayerlensError as exc:
        return [f"the manifest's gains cannot be recomputed under {under}: {exc}"]
    out = []
    bad = []
    for n, (utility, gain) in zip(names, rows):
        l = by_name[n]
        if l.gain is not None and l.method != "none" and not math.isclose(l.gain, gain, rel_tol=1e-9, abs_tol=1e-12):
            bad.append(f"layer {n!r}: gain {l.gain!r} but the manifest gives {gain:.9g} for {l.method} rank {l.rank}")
        elif not math.isclose(l.utility, utility, rel_tol=1e-9, abs_tol=1e-12):
            bad.append(f"layer {n!r}: utility {l.utility!r} but the manifest gives {utility:.9g}")
    if bad:
        more = f" (and {len(bad) - _SHOWN} more layers)" if len(bad) > _SHOWN else ""
        out += [b + f" under {under}" for b in bad[:_SHOWN]]
        if more:
            out[-1] += more
    objective = allocation.objective
    if objective is not None:
        total = math.fsum(g for _, g in rows) + pair_total
        if not math.isclose(objective, total, rel_tol=1e-7, abs_tol=1e-9):
            what = "its layers' gains plus its active pair terms" if pair_total else "its layers' gains"
            out.append(f"objective {objective!r} but the manifest gives {total:.9g} ({what}) under {under}")
    return out


def _group_failures(allocation, layers, manifest) -> list[str]:
    """Tied groups whose layers do not share one method and rank."""
    by_name = {l.name: l for l in layers}
    if manifest is not None:
        import re

        from .problem import group_label, tied_groups

        regex = allocation.constraints.get("tie_groups")
        try:
            found = tied_groups(manifest, regex)
        except re.error as exc:  # a hand-edited allocation
            return [f"constraints.tie_groups {regex!r} is not a usable regex ({exc})"]
        groups = {group_label(k): [manifest.layers[i].name for i in members] for k, members in found.items()}
    else:
        groups = {}
        for l in layers:
            if l.group is not None:
                groups.setdefault(l.group, []).append(l.name)
    out = []
    for label, names in groups.items():
        choices = {(by_name[n].method, by_name[n].rank) for n in names if n in by_name}
        if len(choices) > 1:
            shown = ", ".join(f"{m} r={r}" for m, r in sorted(choices, key=str))
            out.append(f"tied group {label!r} mixes {shown}; its layers must share one method and rank")
    return out


def validate_allocation(allocation: Allocation, manifest=None) -> tuple[list[str], dict, dict]:
    """Everything ``validate`` reports: (integrity failures, metrics, verdict per check).

    With a manifest, the metrics are recomputed against it (compatibility with what each layer
    accepts, correlations with its gradient norms and Fisher traces); without one, the
    correlations are those the solver computed and the allocation carries."""
    from .metrics import compute_metrics, verdicts

    layers = allocation.layers
    grads = fisher = allowed = None
    accepted = None
    if manifest is not None:
        accepted = accepted_methods(manifest)
        allowed = [accepted.get(l.name, set()) for l in layers]
        tables = [manifest.metadata.get(key) for key in ("gradient_norms", "fisher_traces")]
        grads, fisher = [[float(t[l.name]) for l in layers] if isinstance(t, dict) and all(l.name in t for l in layers) else None
                         for t in tables]
    failures = integrity_failures(allocation, manifest, accepted)
    metrics = compute_metrics(allocation.columns, allocation.constraints, grads, fisher, allowed)
    if manifest is None:  # correlations need the profile; keep what the solver computed
        for key in ("utility_gradient_correlation", "utility_fisher_correlation"):
            metrics[key] = allocation.metrics.get(key)
    return failures, metrics, verdicts(metrics, allocation.constraints)


def sound_allocation(path) -> Allocation:
    """The allocation file, refused (one line) when its own fields do not add up: what ``export``,
    ``plot`` and ``apply`` act on."""
    from .allocation import load_allocation
    from .errors import LayerlensError

    data = load_allocation(path)
    failures = integrity_failures(data)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise LayerlensError(f"{path} fails validation: {failures[0]}{more}; run `layerlens-opt validate {path}`")
    return data
