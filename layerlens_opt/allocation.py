"""Allocations (output schema version 1): what every solver returns.

An :class:`Allocation` is built from a problem and one chosen option per layer
by :func:`make_allocation`, which computes totals and the validation metrics
the same way for every solver. ``to_dict`` gives the JSON object of docs/design.md (section 3);
``Allocation.from_dict`` / ``load_allocation`` read one back, every field checked once there
(the one definition of schema v1 on the reading side); report, export, plots, ``apply`` and the
CLI take the typed object and never re-check or default a field.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import AllocationError
from .methods import DEFAULT_WINDOW, METHOD_NAMES
from .metrics import Columns, compute_metrics, verdicts, violations
from .problem import Problem
from .records import Rows, column_of, positional

SCHEMA_VERSION = 1


class Status(str, Enum):
    """Our own solver status, filled from explicit tables in each backend."""

    OPTIMAL = "optimal"  # proven optimal
    FEASIBLE = "feasible"  # satisfies every constraint; optimality not proven (a limit stopped it, or a heuristic)
    INFEASIBLE = "infeasible"  # no allocation meets the constraints (or, for the heuristic, its answer breaks them)
    ERROR = "error"  # the solver failed or stopped without any allocation


#: process exit code of `layerlens-opt solve` per status
EXIT_CODES = {Status.OPTIMAL: 0, Status.FEASIBLE: 0, Status.INFEASIBLE: 3, Status.ERROR: 4}


@dataclass(frozen=True)
class LayerChoice:
    name: str
    kind: str
    block: int | None
    method: str
    rank: int
    params: int
    gain: float | None  # None only in a loaded file that left it out
    utility: float
    in_features: int | None = None
    out_features: int | None = None
    group: str | None = None  # a tied group's label: its layers share method and rank

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "block": self.block,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "method": self.method,
            "rank": self.rank,
            "params": self.params,
            "gain": self.gain,
            "utility": self.utility,
        }
        if self.group is not None:
            out["group"] = self.group
        return out


#: a LayerChoice from every field, in order (tens of thousands of layers: see :func:`positional`)
new_choice = positional(LayerChoice)


@dataclass(frozen=True)
class Allocation:
    solver: str
    status: Status
    objective: float | None
    bound: float | None
    gap: float | None
    budget: int
    total_params: int
    utilization: float
    seconds: Mapping[str, float]
    layers: Sequence[LayerChoice]  # a tuple, or the :class:`~layerlens_opt.records.Rows` standing for one
    metrics: Mapping[str, Any]
    constraints: Mapping[str, Any]
    message: str = ""
    notes: tuple[str, ...] = ()
    warm_start: bool | None = None
    choice: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    #: how the layers' gains were derived from the manifest (metric_weights, normalization, shrink, interactions)
    gain_model: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (Status.OPTIMAL, Status.FEASIBLE)

    @cached_property
    def columns(self) -> Columns:
        """The layers as columns (method, rank, params, utility, block, group, kind): what metrics read."""
        return Columns.of(self.layers)

    def replace(self, **changes) -> "Allocation":
        """A copy with ``changes`` (dataclasses.replace), keeping the computed columns when the layers stay."""
        out = replace(self, **changes)
        if "layers" not in changes and "columns" in self.__dict__:
            out.__dict__["columns"] = self.__dict__["columns"]
        return out

    @property
    def violations(self) -> list[str]:
        return violations(self.columns, self.constraints) if self.layers else []

    @property
    def window(self) -> tuple[float, float]:
        """The utilization window (min, max) the allocation was solved under."""
        return (self.constraints.get("min_utilization", DEFAULT_WINDOW[0]), self.constraints.get("max_utilization", DEFAULT_WINDOW[1]))

    def method_counts(self) -> dict[str, int]:
        """Layers per method, methods in name order."""
        return dict(sorted(Counter(self.columns.method).items()))

    @classmethod
    def from_dict(cls, data: Any, source: str = "allocation") -> "Allocation":
        """The allocation a ``solve --json`` object describes, checked field by field (AllocationError names
        ``source`` and the field); the inverse of :meth:`to_dict`."""
        return _from_dict(data, source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "solver": self.solver,
            "status": self.status.value,
            "message": self.message,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "budget": self.budget,
            "total_params": self.total_params,
            "utilization": self.utilization,
            "utilization_window": list(self.window),
            "seconds": dict(self.seconds),
            "warm_start": self.warm_start,
            "constraints": dict(self.constraints),
            "gain_model": dict(self.gain_model),
            "notes": list(self.notes),
            "layers": [layer.to_dict() for layer in self.layers],
            "metrics": dict(self.metrics),
            "checks": verdicts(self.metrics, self.constraints),
        }

    def to_json(self) -> str:
        from .io import json_text

        return json_text(self.to_dict(), "allocation").rstrip("\n")


def choice_violations(problem: Problem, choice: Sequence[int]) -> list[str]:
    """What one option per layer breaks (empty when feasible), without computing any metric."""
    methods, params, blocks, groups, ranks = [], [], [], [], []
    for l, o in enumerate(choice):
        info = problem.layers[l]
        n = len(info.members) or 1
        method, cost, rank = problem.method_of(o), int(problem.option_cost[o]) // n, int(problem.option_rank[o])
        for block in ([m.block for _, m in info.members] if info.members else [info.block]):
            methods.append(method)
            params.append(cost)
            blocks.append(block)
            groups.append(info.group if info.members else None)
            ranks.append(rank)
    cols = Columns(method=methods, rank=np.array(ranks, dtype=float), params=np.array(params, dtype=np.int64),
                   utility=np.zeros(len(methods)), block=blocks, group=groups, kind=["other"] * len(methods))
    return violations(cols, problem.constraints.to_dict())


def gap_of(objective: float | None, bound: float | None) -> float | None:
    """Relative gap (bound - objective) / max(|objective|, 1e-12), never negative."""
    if objective is None or bound is None:
        return None
    return max(0.0, (bound - objective) / max(abs(objective), 1e-12))


def make_allocation(
    problem: Problem,
    choice: Sequence[int] | None,
    *,
    solver: str,
    status: Status,
    bound: float | None = None,
    seconds: Mapping[str, float] | None = None,
    message: str = "",
    notes: Sequence[str] = (),
    warm_start: bool | None = None,
) -> Allocation:
    """Assemble an allocation from one option index per layer (or none, for infeasible/error)."""
    c = problem.constraints
    constraints = c.to_dict()
    all_notes = tuple(problem.notes) + tuple(notes)
    if choice is None:
        return Allocation(
            solver=solver, status=status, objective=None, bound=bound, gap=None, budget=c.budget,
            total_params=0, utilization=0.0, seconds=dict(seconds or {}), layers=(),
            metrics=compute_metrics([], constraints), constraints=constraints, message=message,
            notes=all_notes, warm_start=warm_start, choice=None, gain_model=dict(problem.gain_model),
        )
    choice = tuple(map(int, choice))
    if len(choice) != problem.n_layers:
        raise ValueError(f"choice has {len(choice)} entries for {problem.n_layers} layers")
    picked = list(choice)
    wrong = np.flatnonzero(problem.option_layer[picked] != np.arange(len(picked)))
    if len(wrong):
        l = int(wrong[0])
        raise ValueError(f"option {choice[l]} does not belong to layer {l} ({problem.layers[l].name})")
    option_rank, option_cost, option_gain = problem.option_rank[picked].tolist(), problem.option_cost[picked].tolist(), problem.option_gain[picked].tolist()
    method_names = [METHOD_NAMES[m] for m in problem.option_method[picked].tolist()]
    objective = problem.value(choice)  # the layers' gains plus any active pair terms
    if status == Status.OPTIMAL and bound is None:
        bound = objective
    if problem.layer_index is None:  # one row per layer, in order: every column straight from the problem's
        layer_columns = problem.layers
        method, rank, params, gains, group = method_names, option_rank, option_cost, option_gain, [None] * len(choice)
    else:  # every manifest layer at its manifest index: a tied group lists each member
        layer_columns = problem.manifest_layers
        n = len(layer_columns)
        owner = np.empty(n, dtype=np.int64)  # the problem layer of each manifest layer
        gains = [0.0] * n
        for l, (info, i, o, start) in enumerate(zip(problem.layers, problem.layer_index, choice, problem.layer_start.tolist())):
            if info.members:
                at = info.members.column("index") if isinstance(info.members, Rows) else [j for j, _ in info.members]
                owner[at] = l
                k = o - start
                for j, member in zip(at, info.member_gains):
                    gains[j] = float(member[k])
            else:
                owner[i] = l
                gains[i] = option_gain[l]
        sizes = np.array(problem.n_members, dtype=np.int64)
        of = owner.tolist()
        method = [method_names[l] for l in of]
        rank = np.array(option_rank, dtype=np.int64)[owner].tolist()
        params = (np.array(option_cost, dtype=np.int64) // sizes)[owner].tolist()  # a group's cost shared by its members
        labels = [info.group if info.members else None for info in problem.layers]
        group = [labels[l] for l in of]
    col = functools.partial(column_of, layer_columns)
    layers = Rows(new_choice, {"name": col("name"), "kind": col("kind"), "block": col("block"), "method": method, "rank": rank,
                               "params": params, "gain": gains, "utility": col("utility"), "in_features": col("in_features"),
                               "out_features": col("out_features"), "group": group})
    allowed = col("methods")
    columns = Columns(method=method, rank=np.array(rank, dtype=float), params=np.array(params, dtype=np.int64),
                      utility=np.array(col("utility"), dtype=float), block=col("block"), group=group, kind=col("kind"))
    total = int(columns.params.sum())
    metrics = compute_metrics(columns, constraints, problem.gradient_norms, problem.fisher_traces, allowed)
    alloc = Allocation(
        solver=solver, status=status, objective=objective, bound=bound, gap=gap_of(objective, bound),
        budget=c.budget, total_params=total, utilization=total / c.budget, seconds=dict(seconds or {}),
        layers=layers, metrics=metrics, constraints=constraints, message=message,
        notes=all_notes, warm_start=warm_start, choice=choice, gain_model=dict(problem.gain_model),
    )
    alloc.__dict__["columns"] = columns  # the cached_property's value, already computed from the same layers
    return alloc


def _number(value, finite: bool = True) -> bool:
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (not finite or math.isfinite(value))
    except OverflowError:  # an integer too large for a float
        return False


def _check_layer_fields(path, layer: dict) -> None:
    """The optional per-layer fields, when present, have the types `solve --json` writes."""
    name = layer["name"]
    if not isinstance(layer["kind"], str):
        raise AllocationError(f"{path}: layer {name!r} field 'kind' must be a string, got {layer['kind']!r}")
    if not _number(layer["utility"]) or layer["utility"] < 0:
        raise AllocationError(f"{path}: layer {name!r} field 'utility' must be a non-negative finite number, got {layer['utility']!r}")
    gain = layer.get("gain")
    if gain is not None and not _number(gain):
        raise AllocationError(f"{path}: layer {name!r} field 'gain' must be a finite number, got {gain!r}")
    group = layer.get("group")
    if group is not None and (not isinstance(group, str) or not group):
        raise AllocationError(f"{path}: layer {name!r} field 'group' must be a non-empty string, got {group!r}")
    block = layer.get("block")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 0):
        raise AllocationError(f"{path}: layer {name!r} field 'block' must be a non-negative integer or null, got {block!r}")
    for key in ("in_features", "out_features"):
        value = layer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise AllocationError(f"{path}: layer {name!r} field {key!r} must be a positive integer or null, got {value!r}")


REQUIRED_KEYS = ("schema_version", "solver", "status", "budget", "layers")
LAYER_REQUIRED = ("name", "method", "rank", "params")
#: every key an allocation object may hold (what :meth:`Allocation.to_dict` writes); any other is refused
KNOWN_KEYS = ("schema_version", "solver", "status", "message", "objective", "bound", "gap", "budget", "total_params",
              "utilization", "utilization_window", "seconds", "warm_start", "constraints", "gain_model", "notes", "layers", "metrics",
              "checks")
LAYER_KEYS = ("name", "kind", "block", "in_features", "out_features", "method", "rank", "params", "gain", "utility", "group")


def load_allocation(path: str | Path) -> Allocation:
    """Read an allocation JSON file (``solve --json -o``) as an :class:`Allocation`, every field checked."""
    path = Path(path)
    from .io import DuplicateKey, NotFinite, strict_json

    try:
        data = strict_json(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is not part of the JSON
    except DuplicateKey as exc:
        raise AllocationError(f"{path}: the key {exc.key!r} appears twice in one object; give each key once") from None
    except FileNotFoundError:
        raise AllocationError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise AllocationError(f"{path}: not UTF-8 text (byte {exc.start}); save the allocation as UTF-8 JSON") from None
    except OSError as exc:
        raise AllocationError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise AllocationError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise AllocationError(f"{path}: the JSON is nested too deeply to be an allocation") from None
    except NotFinite as exc:
        raise AllocationError(f"{path}: {exc}") from None
    return _from_dict(data, str(path))


def as_allocation(allocation: Any, source: str = "allocation") -> Allocation:
    """An :class:`Allocation` as it is, a ``solve --json`` dict checked and converted, or a file path loaded."""
    if isinstance(allocation, (str, os.PathLike)):
        return load_allocation(allocation)
    return allocation if isinstance(allocation, Allocation) else _from_dict(allocation, source)


def _from_dict(data: Any, path: str) -> Allocation:
    """The one schema check of an allocation object (see :meth:`Allocation.from_dict`)."""
    if not isinstance(data, dict):
        raise AllocationError(f"{path}: the top level must be a JSON object")
    if "layers" in data and "schema_version" in data and "solver" not in data and "budget" not in data:
        raise AllocationError(f"{path}: this looks like a manifest, not an allocation; run `layerlens-opt solve` on it first")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise AllocationError(f"{path}: missing required key {key!r}; is this an allocation written by `solve --json -o`?")
    unknown = [k for k in data if k not in KNOWN_KEYS]
    if unknown:
        raise AllocationError(f"{path}: unknown key {unknown[0]!r} (an allocation has {', '.join(KNOWN_KEYS)}); remove it or "
                              "check its spelling")
    if data["schema_version"] != SCHEMA_VERSION:
        raise AllocationError(f"{path}: allocation schema_version {data['schema_version']!r}; this version reads {SCHEMA_VERSION}")
    if not isinstance(data["layers"], list):
        raise AllocationError(f"{path}: 'layers' must be a list")
    rows = []
    for i, layer in enumerate(data["layers"]):
        if not isinstance(layer, dict):
            raise AllocationError(f"{path}: layers[{i}] must be an object")
        if not isinstance(layer.get("name"), str):
            raise AllocationError(f"{path}: layers[{i}] field 'name' must be a string, got {layer.get('name')!r}")
        for key in LAYER_REQUIRED:
            if key not in layer:
                raise AllocationError(f"{path}: layers[{i}] ({layer.get('name', '?')}) lacks field {key!r}")
        odd = [k for k in layer if k not in LAYER_KEYS]
        if odd:
            raise AllocationError(f"{path}: layer {layer['name']!r} has unknown field {odd[0]!r} (a layer has "
                                  f"{', '.join(LAYER_KEYS)}); remove it or check its spelling")
        for key in ("rank", "params"):
            value = layer[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AllocationError(f"{path}: layer {layer['name']!r} field {key!r} must be a non-negative integer, got {value!r}")
        if not isinstance(layer["method"], str) or layer["method"] not in METHOD_NAMES:
            raise AllocationError(f"{path}: layer {layer['name']!r} has unknown method {layer['method']!r}; valid: {', '.join(METHOD_NAMES)}")
        layer = {"kind": "other", "utility": 0.0, **layer}  # the caller's dict is never changed
        _check_layer_fields(path, layer)
        rows.append(layer)
    budget = data["budget"]
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise AllocationError(f"{path}: 'budget' must be a positive integer, got {budget!r}")
    if not isinstance(data.get("status"), str) or data["status"] not in [s.value for s in Status]:
        raise AllocationError(f"{path}: 'status' is {data.get('status')!r}; it must be one of {', '.join(s.value for s in Status)}")
    constraints = data.get("constraints") or {}
    if not isinstance(constraints, dict):
        raise AllocationError(f"{path}: 'constraints' must be an object (as `solve --json` writes it), got {type(constraints).__name__}")
    constraints = dict(constraints)
    for key in ("min_utilization", "max_utilization"):
        if key in constraints and (not isinstance(constraints[key], (int, float)) or isinstance(constraints[key], bool)
                                   or not 0 <= constraints[key] <= 1):
            raise AllocationError(f"{path}: constraints.{key} must be a number in [0, 1], got {constraints[key]!r}")
    if constraints.get("tie_groups") is not None and not isinstance(constraints["tie_groups"], str):
        raise AllocationError(f"{path}: constraints.tie_groups must be a regex string or null, got {constraints['tie_groups']!r}")
    caps = constraints.get("method_caps")
    if caps is not None and (not isinstance(caps, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in caps.values())):
        raise AllocationError(f"{path}: constraints.method_caps must map methods to whole numbers")
    for key in ("total_params",):
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0):
            raise AllocationError(f"{path}: {key!r} must be a non-negative integer, got {data[key]!r}")
    for key in ("utilization", "objective", "bound", "gap"):
        if data.get(key) is not None and not _number(data[key]):
            raise AllocationError(f"{path}: {key!r} must be a finite number or null, got {data[key]!r}")
    for key in ("solver", "message"):
        if key in data and not isinstance(data[key], str):
            raise AllocationError(f"{path}: {key!r} must be a string, got {data[key]!r}")
    for key in ("metrics", "checks", "seconds"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise AllocationError(f"{path}: {key!r} must be an object, got {data[key]!r}")
    for key, value in (data.get("metrics") or {}).items():
        if value is not None and not isinstance(value, bool) and not _number(value):
            raise AllocationError(f"{path}: metrics.{key} must be a finite number, true/false or null, got {value!r}")
    if "notes" in data and not (isinstance(data["notes"], list) and all(isinstance(n, str) for n in data["notes"])):
        raise AllocationError(f"{path}: 'notes' must be a list of strings")
    for key in ("min_methods",):
        if key in constraints and (isinstance(constraints[key], bool) or not isinstance(constraints[key], int) or constraints[key] < 0):
            raise AllocationError(f"{path}: constraints.{key} must be a non-negative integer, got {constraints[key]!r}")
    if "tie_blocks" in constraints and not isinstance(constraints["tie_blocks"], bool):
        raise AllocationError(f"{path}: constraints.tie_blocks must be true or false, got {constraints['tie_blocks']!r}")
    if constraints.setdefault("budget", budget) != budget:
        raise AllocationError(f"{path}: constraints.budget {constraints['budget']!r} differs from 'budget' {budget!r}")
    window = data.get("utilization_window") or list(DEFAULT_WINDOW)
    if not (isinstance(window, list) and len(window) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)):
        raise AllocationError(f"{path}: 'utilization_window' must be [min, max], got {window!r}")
    constraints.setdefault("min_utilization", window[0])
    constraints.setdefault("max_utilization", window[1])
    for key in ("total_params", "utilization"):
        if key not in data:
            raise AllocationError(f"{path}: missing required key {key!r}; is this an allocation written by `solve --json -o`?")
    if not _number(data["utilization"]) or data["utilization"] < 0:
        raise AllocationError(f"{path}: 'utilization' must be a non-negative finite number, got {data['utilization']!r}")
    seconds = data.get("seconds") or {}
    for key, value in seconds.items():
        if not _number(value):
            raise AllocationError(f"{path}: seconds.{key} must be a finite number, got {value!r}")
    warm = data.get("warm_start")
    if warm is not None and not isinstance(warm, bool):
        raise AllocationError(f"{path}: 'warm_start' must be true, false or null, got {warm!r}")
    gain_model = _gain_model(data.get("gain_model"), path)
    layers = tuple(
        LayerChoice(name=l["name"], kind=l["kind"], block=l.get("block"), method=l["method"], rank=l["rank"], params=l["params"],
                    gain=None if l.get("gain") is None else float(l["gain"]), utility=float(l["utility"]),
                    in_features=l.get("in_features"), out_features=l.get("out_features"), group=l.get("group"))
        for l in rows)
    return Allocation(
        solver=data["solver"], status=Status(data["status"]), objective=data.get("objective"), bound=data.get("bound"),
        gap=data.get("gap"), budget=budget, total_params=data["total_params"], utilization=float(data["utilization"]),
        seconds=dict(seconds), layers=layers, metrics=dict(data.get("metrics") or {}), constraints=constraints,
        message=data.get("message", ""), notes=tuple(data.get("notes") or ()), warm_start=warm, gain_model=gain_model,
    )


GAIN_MODEL_KEYS = ("metric_weights", "normalization", "shrink", "interactions")


def _gain_model(value: Any, path: str) -> dict:
    """An allocation's ``gain_model`` checked field by field ({} when an older allocation has none)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AllocationError(f"{path}: 'gain_model' must be an object (as `solve --json` writes it), got {value!r}")
    odd = [k for k in value if k not in GAIN_MODEL_KEYS]
    if odd:
        raise AllocationError(f"{path}: gain_model has unknown key {odd[0]!r} (it has {', '.join(GAIN_MODEL_KEYS)})")
    weights = value.get("metric_weights")
    if weights is not None and not (isinstance(weights, dict) and all(isinstance(k, str) and _number(v) and v >= 0
                                                                       for k, v in weights.items())):
        raise AllocationError(f"{path}: gain_model.metric_weights must map metric names to finite numbers >= 0, or be null")
    if value.get("normalization", "max") not in ("max", "rank"):
        raise AllocationError(f"{path}: gain_model.normalization must be 'max' or 'rank', got {value['normalization']!r}")
    shrink = value.get("shrink", 0.0)
    if not _number(shrink) or not 0 <= shrink <= 1:
        raise AllocationError(f"{path}: gain_model.shrink must be a number in [0, 1], got {shrink!r}")
    if not isinstance(value.get("interactions", True), bool):
        raise AllocationError(f"{path}: gain_model.interactions must be true or false, got {value['interactions']!r}")
    return dict(value)
