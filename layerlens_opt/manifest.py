"""The manifest (schema version 2; version 1 still reads): the contract between profiling and solving.

``load_manifest`` reads and validates a file; ``parse_manifest`` a decoded
object. Validation is strict: unknown keys are refused (a typo must not
silently change an allocation) and every error names the layer and the field.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ManifestError
from .methods import KINDS, METHOD_NAMES
from .records import Rows, column_of, positional

SCHEMA_VERSION = 2
#: the version written when a manifest has no interactions (any version 1 reader can read it)
SEPARABLE_SCHEMA_VERSION = 1
#: versions this reader accepts; version 2 adds the optional top-level ``interactions``
READABLE_VERSIONS = (1, 2)
INTERACTION_WHEN = ("either", "both")

DEFAULT_METRIC_WEIGHTS = {"gradient_energy": 0.4, "fisher": 0.4, "proxy_eval": 0.2}

TOP_KEYS = {"schema_version", "model", "metric_weights", "layers", "metadata", "interactions"}
REQUIRED_TOP = ("schema_version", "layers")
LAYER_KEYS = {"name", "kind", "in_features", "out_features", "block", "metrics", "allowed_methods", "gain_curves", "group"}
REQUIRED_LAYER = ("name", "kind", "in_features", "out_features", "metrics")


@dataclass(frozen=True)
class Layer:
    """One adaptable layer of the model."""

    name: str
    kind: str
    in_features: int
    out_features: int
    metrics: Mapping[str, float]
    block: int | None = None
    allowed_methods: tuple[str, ...] | None = None
    #: method -> ((rank, captured fraction), ...), ranks ascending
    gain_curves: Mapping[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    #: layers naming the same group take the same method and rank (tied groups)
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }
        if self.block is not None:
            out["block"] = self.block
        out["metrics"] = dict(self.metrics)
        if self.allowed_methods is not None:
            out["allowed_methods"] = list(self.allowed_methods)
        if self.gain_curves:
            out["gain_curves"] = {m: {str(r): v for r, v in pts} for m, pts in self.gain_curves.items()}
        if self.group is not None:
            out["group"] = self.group
        return out


#: a Layer from every field, in order (tens of thousands of layers: see :func:`positional`)
_new_layer = positional(Layer)


@dataclass(frozen=True)
class Interaction:
    """A pairwise term of the objective, in the units of ``metric`` (see docs/design.md).

    ``when="either"`` adds ``value`` when at least one of the two layers is adapted
    (what a leave-pair-out probe measures); ``"both"`` when both are.
    """

    a: str
    b: str
    value: float
    when: str = "either"

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [self.a, self.b], "value": self.value, "when": self.when}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``metric_weights`` is always filled (defaults applied)."""

    layers: Sequence[Layer]  # a tuple, or the :class:`~layerlens_opt.records.Rows` standing for one
    metric_weights: Mapping[str, float]
    model: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: pairwise terms and the metric whose units they are in
    interactions: tuple[Interaction, ...] = ()
    interaction_metric: str | None = None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.column("metrics")[0]) if self.layers else ()

    def column(self, name: str) -> Sequence:
        """One field of every layer (a :class:`Layer` field name), without building the layers where they are
        still columns (a large manifest read from a file: see :class:`~layerlens_opt.records.Rows`)."""
        return column_of(self.layers, name)

    def to_dict(self) -> dict[str, Any]:
        # the lowest version that holds the content: without interactions a version 1 reader can read it
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION if self.interaction_metric is not None else SEPARABLE_SCHEMA_VERSION}
        if self.model:
            out["model"] = dict(self.model)
        out["metric_weights"] = dict(self.metric_weights)
        out["layers"] = [layer.to_dict() for layer in self.layers]
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.interaction_metric is not None:
            out["interactions"] = {"metric": self.interaction_metric, "pairs": [i.to_dict() for i in self.interactions]}
        return out


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file; raise ManifestError naming the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark some editors write is not part of the JSON
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8 JSON") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    from .io import DuplicateKey, NotFinite, strict_json

    try:
        data = strict_json(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except DuplicateKey as exc:
        raise ManifestError(f"{path}: the key {exc.key!r} appears twice in one object; give each key once") from None
    except NotFinite as exc:
        raise ManifestError(f"{path}: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{path}: the JSON is nested too deeply to be a manifest") from None
    return parse_manifest(data, source=str(path))


#: the largest finite float: an integer beyond it has no float value
_FLOAT_MAX = sys.float_info.max


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    """A number (not a bool) that is finite as a float: an integer too large for a float is not."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def _all_finite(values: list) -> bool:
    """:func:`_finite` of every value, in two C-level passes (a type set, a range test)."""
    return {type(v) for v in values} <= {int, float} and all(-_FLOAT_MAX <= v <= _FLOAT_MAX for v in values)


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a 400-digit integer makes a poor error line)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: the largest layer dimension accepted (far beyond any model; keeps every cost exact in int64)
MAX_DIM = 2**31


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ManifestError(f"{where} must be a positive integer, got {value!r}")
    if value > MAX_DIM:
        shown = f"{value:.3g}" if value <= _FLOAT_MAX else _shown(value)
        raise ManifestError(f"{where} is {shown}, above the largest dimension accepted ({MAX_DIM:,}); check the number")
    return value


def parse_manifest(data: Any, source: str = "manifest") -> Manifest:
    """Validate a decoded manifest object against schema version 1."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the top level must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ManifestError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys are {', '.join(sorted(TOP_KEYS))}"
        )
    for key in REQUIRED_TOP:
        if key not in data:
            raise ManifestError(f"{source}: missing required key {key!r}")
    version = data["schema_version"]
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ManifestError(
            f"{source}: schema_version is {version!r}; this version of layerlens-opt reads {' and '.join(map(str, READABLE_VERSIONS))}"
        )
    if version == 1 and "interactions" in data:
        raise ManifestError(f"{source}: 'interactions' needs schema_version 2 (this manifest says 1); set \"schema_version\": 2")
    raw_layers = data["layers"]
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ManifestError(f"{source}: 'layers' must be a non-empty list of layer objects")

    layers = _checked_in_bulk(raw_layers, source)
    if isinstance(layers, Rows):
        seen = dict(zip(layers.column("name"), range(len(layers))))
    elif layers is not None:
        seen = {layer.name: i for i, layer in enumerate(layers)}
    else:  # something is off (or unusual): layer by layer, so the first problem is the one named
        layers, seen = [], {}
        for i, raw in enumerate(raw_layers):
            layer = _parse_layer(raw, i, source)
            if layer.name in seen:
                raise ManifestError(
                    f"{source}: layer name {layer.name!r} appears twice (layers[{seen[layer.name]}] and layers[{i}]); names must be unique"
                )
            seen[layer.name] = i
            layers.append(layer)

    metrics_of = column_of(layers, "metrics")
    metric_names = list(metrics_of[0])
    names = set(metric_names)
    for i, metrics in enumerate(metrics_of):
        if metrics.keys() == names:  # the common case, without building the two lists below
            continue
        layer = layers[i]
        missing = [m for m in metric_names if m not in layer.metrics]
        extra = [m for m in layer.metrics if m not in metric_names]
        if missing or extra:
            what = []
            if missing:
                what.append(f"lacks {', '.join(map(repr, missing))}")
            if extra:
                what.append(f"has {', '.join(map(repr, extra))} that layer {layers[0].name!r} lacks")
            raise ManifestError(
                f"{source}: layer {layer.name!r} field 'metrics' {' and '.join(what)}; every layer must report the same metrics"
            )

    weights = data.get("metric_weights", DEFAULT_METRIC_WEIGHTS)
    if not isinstance(weights, dict):
        raise ManifestError(f"{source}: 'metric_weights' must be an object mapping metric name to weight")
    for key, value in weights.items():
        if not _finite(value) or value < 0:
            raise ManifestError(f"{source}: metric_weights[{key!r}] must be a non-negative finite number, got {_shown(value)}")
    check_weights(weights, metric_names, source)

    model = data.get("model", {})
    if not isinstance(model, dict):
        raise ManifestError(f"{source}: 'model' must be an object")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ManifestError(f"{source}: 'metadata' must be an object")
    for key in ("gradient_norms", "fisher_traces"):
        table = metadata.get(key)
        if table is None:
            continue
        if not isinstance(table, dict) or not _all_finite(list(table.values())):
            raise ManifestError(f"{source}: metadata.{key} must map layer names to finite numbers")
        unknown_names = sorted(table.keys() - seen.keys())
        if unknown_names:
            raise ManifestError(
                f"{source}: metadata.{key} names layer(s) not in 'layers': {', '.join(map(repr, unknown_names[:5]))}"
            )
    interactions, interaction_metric = _parse_interactions(data.get("interactions"), seen, metric_names, source)
    return Manifest(
        layers=layers if isinstance(layers, Rows) else tuple(layers),
        metric_weights=dict(weights),
        model=model,
        metadata=metadata,
        interactions=interactions,
        interaction_metric=interaction_metric,
    )


def _parse_interactions(raw: Any, names: Mapping[str, int], metric_names: list[str], source: str):
    if raw is None:
        return (), None
    where = f"{source}: interactions"
    if not isinstance(raw, dict) or set(raw) - {"metric", "pairs"} or "metric" not in raw or "pairs" not in raw:
        raise ManifestError(f'{where} must be an object {{"metric": METRIC, "pairs": [{{"layers": [A, B], "value": V}}, ...]}}')
    metric = raw["metric"]
    if metric not in metric_names:
        raise ManifestError(f"{where}.metric {metric!r} is not a metric of the layers ({', '.join(metric_names)}); the values are in its units")
    if not isinstance(raw["pairs"], list):
        raise ManifestError(f"{where}.pairs must be a list of {{\"layers\": [A, B], \"value\": V}} objects")
    out: list[Interaction] = []
    seen_pairs: set[frozenset] = set()
    for k, pair in enumerate(raw["pairs"]):
        at = f"{where}.pairs[{k}]"
        if not isinstance(pair, dict) or set(pair) - {"layers", "value", "when"} or "layers" not in pair or "value" not in pair:
            raise ManifestError(f'{at} must be an object with "layers" (two layer names), "value" and optionally "when"')
        two = pair["layers"]
        if not isinstance(two, list) or len(two) != 2 or not all(isinstance(n, str) for n in two):
            raise ManifestError(f"{at}.layers must be a list of two layer names, got {two!r}")
        for n in two:
            if n not in names:
                raise ManifestError(f"{at}.layers names {n!r}, which is not in 'layers'")
        if two[0] == two[1]:
            raise ManifestError(f"{at}.layers names {two[0]!r} twice; an interaction joins two different layers")
        if frozenset(two) in seen_pairs:
            raise ManifestError(f"{at}: the pair {two[0]!r}, {two[1]!r} appears twice; give each pair once")
        seen_pairs.add(frozenset(two))
        value = pair["value"]
        if not _finite(value):
            raise ManifestError(f"{at}.value must be a finite number, got {_shown(value)}")
        when = pair.get("when", "either")
        if when not in INTERACTION_WHEN:
            raise ManifestError(f"{at}.when is {when!r}; it must be one of {', '.join(INTERACTION_WHEN)}")
        out.append(Interaction(two[0], two[1], float(value), when))
    return tuple(out), metric


def check_weights(weights: Mapping[str, float], metric_names: list[str] | tuple[str, ...], source: str = "manifest") -> None:
    """Weights and metrics must name the same things (the predecessor's silent-zero bug)."""
    no_metric = sorted(set(weights) - set(metric_names))
    no_weight = sorted(set(metric_names) - set(weights))
    if no_metric or no_weight:
        parts = []
        if no_metric:
            parts.append(f"weight key(s) {', '.join(map(repr, no_metric))} name no metric")
        if no_weight:
            parts.append(f"metric(s) {', '.join(map(repr, no_weight))} have no weight")
        raise ManifestError(
            f"{source}: metric_weights do not match the layers' metrics: {'; '.join(parts)}. "
            f"Metrics: {', '.join(metric_names)}; weights: {', '.join(weights) or '(none)'}"
        )
    if sum(weights.values()) <= 0:
        raise ManifestError(f"{source}: metric_weights are all zero; give at least one metric a positive weight")


#: the layer fields :func:`_checked_in_bulk` checks column by column (a layer with others goes through :func:`_parse_layer`)
_PLAIN_KEYS = frozenset({"name", "kind", "in_features", "out_features", "block", "metrics", "group"})


def _checked_in_bulk(raw_layers: list, source: str) -> Sequence[Layer] | None:
    """The layers, when every field :func:`_parse_layer` checks holds, checked a column at a time
    (tens of thousands of layers: C-level passes instead of a dozen Python checks per layer);
    None when any check fails, and :func:`_parse_layer` then finds and names the first problem.
    Accepts exactly what the layer-by-layer path accepts and builds the same layers; a layer with
    ``allowed_methods`` or ``gain_curves`` is parsed by :func:`_parse_layer` itself."""
    try:
        if set(map(type, raw_layers)) != {dict}:
            return None
        keys = set(chain.from_iterable(raw_layers))  # every field any layer has
        if not keys <= LAYER_KEYS:
            return None
        names = [r["name"] for r in raw_layers]
        kinds = [r["kind"] for r in raw_layers]
        d_in = [r["in_features"] for r in raw_layers]
        d_out = [r["out_features"] for r in raw_layers]
        metrics = [r["metrics"] for r in raw_layers]
    except KeyError:  # a required field is missing
        return None
    blocks = [r.get("block") for r in raw_layers]
    groups = [r.get("group") for r in raw_layers]
    if set(map(type, names)) != {str} or "" in names or len(set(names)) != len(names):
        return None
    if not set(map(type, kinds)) <= {str} or not set(kinds) <= set(KINDS):
        return None
    if set(map(type, d_in + d_out)) != {int} or min(d_in + d_out) <= 0 or max(d_in + d_out) > MAX_DIM:
        return None
    if not set(map(type, blocks)) <= {int, type(None)} or min((b for b in blocks if b is not None), default=0) < 0:
        return None
    if not set(map(type, groups)) <= {str, type(None)} or "" in groups:
        return None
    if set(map(type, metrics)) != {dict} or not all(metrics):
        return None
    values = list(chain.from_iterable(map(dict.values, metrics)))
    types = set(map(type, values))
    if not types <= {int, float}:
        return None
    # not NaN, infinite, negative or an int too large for a float: a NaN or an infinity makes the sum NaN or
    # infinite, a too large int (or a sum past the largest float) raises; min() is then exact (no NaN among them)
    try:
        if not math.isfinite(math.fsum(values)) or min(values) < 0.0:
            return None
    except OverflowError:
        return None
    as_float = types == {float}
    if keys <= _PLAIN_KEYS:  # no layer has allowed_methods or gain_curves
        if as_float:  # the layers as columns, each Layer built when read (see Manifest.column)
            n = len(names)
            return Rows(_new_layer, {"name": names, "kind": kinds, "in_features": d_in, "out_features": d_out,
                                     "metrics": list(map(dict, metrics)), "block": blocks, "allowed_methods": [None] * n,
                                     "gain_curves": [{} for _ in range(n)], "group": groups})
        return [_new_layer(name, kind, i, o, {k: float(v) for k, v in m.items()}, b, None, {}, g)
                for name, kind, i, o, m, b, g in zip(names, kinds, d_in, d_out, metrics, blocks, groups)]
    out = []
    for r, name, kind, i, o, m, b, g in zip(raw_layers, names, kinds, d_in, d_out, metrics, blocks, groups):
        if not r.keys() <= _PLAIN_KEYS:
            out.append(_parse_layer(r, len(out), source))
            continue
        out.append(_new_layer(name, kind, i, o, dict(m) if as_float else {k: float(v) for k, v in m.items()}, b, None, {}, g))
    return out


def _parse_layer(raw: Any, index: int, source: str) -> Layer:
    where = f"{source}: layers[{index}]"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must be an object, got {type(raw).__name__}")
    if isinstance(raw.get("name"), str) and raw["name"]:
        where = f"{source}: layer {raw['name']!r}"
    unknown = sorted(set(raw) - LAYER_KEYS)
    if unknown:
        raise ManifestError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; allowed fields are {', '.join(sorted(LAYER_KEYS))}"
        )
    for key in REQUIRED_LAYER:
        if key not in raw:
            raise ManifestError(f"{where}: missing required field {key!r}")
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where} field 'name' must be a non-empty string, got {name!r}")
    kind = raw["kind"]
    if kind not in KINDS:
        raise ManifestError(f"{where} field 'kind' is {kind!r}; it must be one of {', '.join(KINDS)}")
    d_in = _positive_int(raw["in_features"], f"{where} field 'in_features'")
    d_out = _positive_int(raw["out_features"], f"{where} field 'out_features'")
    block = raw.get("block")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 0):
        raise ManifestError(f"{where} field 'block' must be a non-negative integer, got {block!r}")

    metrics = raw["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ManifestError(f"{where} field 'metrics' must be a non-empty object of metric name -> number")
    for key, value in metrics.items():
        if not _finite(value) or value < 0:
            raise ManifestError(
                f"{where} field 'metrics.{key}' must be a non-negative finite number, got {_shown(value)}"
            )

    allowed = raw.get("allowed_methods")
    if allowed is not None:
        if not isinstance(allowed, list) or not allowed:
            raise ManifestError(f"{where} field 'allowed_methods' must be a non-empty list of method names")
        for m in allowed:
            if m not in METHOD_NAMES:
                raise ManifestError(
                    f"{where} field 'allowed_methods' has unknown method {m!r}; valid methods are {', '.join(METHOD_NAMES)}"
                )
        allowed = tuple(dict.fromkeys(allowed))

    group = raw.get("group")
    if group is not None and (not isinstance(group, str) or not group):
        raise ManifestError(f"{where} field 'group' must be a non-empty string naming the layer's tied group, got {group!r}")

    curves_raw = raw.get("gain_curves", {})
    if not isinstance(curves_raw, dict):
        raise ManifestError(f"{where} field 'gain_curves' must be an object: method -> {{rank: fraction}}")
    curves: dict[str, tuple[tuple[int, float], ...]] = {}
    for method, points in curves_raw.items():
        field_name = f"{where} field 'gain_curves.{method}'"
        if method not in METHOD_NAMES or method == "none":
            raise ManifestError(
                f"{field_name}: unknown method {method!r}; curves can be given for {', '.join(METHOD_NAMES[1:])}"
            )
        if not isinstance(points, dict) or not points:
            raise ManifestError(f"{field_name} must be a non-empty object of rank -> captured fraction")
        parsed = []
        for rank_key, value in points.items():
            try:
                rank = int(rank_key)
            except (TypeError, ValueError):
                rank = -1
            if rank <= 0 or str(rank) != str(rank_key).strip():
                raise ManifestError(f"{field_name}: rank {rank_key!r} must be a positive integer")
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ManifestError(f"{field_name}[{rank_key!r}] must be a fraction in [0, 1], got {value!r}")
            parsed.append((rank, float(value)))
        parsed.sort()
        for (r0, v0), (r1, v1) in zip(parsed, parsed[1:]):
            if v1 < v0:
                raise ManifestError(
                    f"{field_name} decreases from rank {r0} ({v0}) to rank {r1} ({v1}); a gain curve must be non-decreasing in rank"
                )
        curves[method] = tuple(parsed)

    return Layer(
        name=name,
        kind=kind,
        in_features=d_in,
        out_features=d_out,
        metrics={k: float(v) for k, v in metrics.items()},
        block=block,
        allowed_methods=allowed,
        gain_curves=curves,
        group=group,
    )


def save_manifest(manifest: Manifest, path: str | Path, inputs=()) -> None:
    """Write ``manifest`` as JSON, atomically and never onto one of ``inputs`` (version 2 only when it has interactions).
    The one manifest writer: the profiler, the probe and the generator all write through it."""
    from .io import json_text, write_atomic

    write_atomic(path, json_text(manifest.to_dict(), "manifest"), inputs, "manifest")
