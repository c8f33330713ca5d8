"""Plain-text tables for people: allocations, summaries, comparisons, validation."""

from __future__ import annotations

from itertools import zip_longest
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .methods import DEFAULT_WINDOW, METHODS
from .metrics import THRESHOLDS, verdicts

if TYPE_CHECKING:
    from .allocation import Allocation


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """Columns padded to width; ``align`` is one 'l'/'r' per column (default: numbers right)."""
    return _render(headers, [[_cell(v) for v in row] for row in rows], align)


def _render(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None) -> str:
    """:func:`table` of cells already written as text (a short row's missing cells are blanks, a long row's extra
    ones ignored)."""
    columns = [list(col) for col in zip_longest(*rows, fillvalue="")][: len(headers)]
    columns += [[""] * len(rows) for _ in range(len(headers) - len(columns))]
    return _render_columns(headers, columns, align)


def _render_columns(headers: Sequence[str], columns: Sequence[Sequence[str]], align: str | None) -> str:
    """A table given as one list of text cells per column, all of one length (widths taken column by column and one
    format string for every line: tens of thousands of rows)."""
    widths = [max(len(h), max(map(len, col), default=0)) for h, col in zip(headers, columns)]
    align = align or "".join("r" if len(col) and _numeric(col[0]) else "l" for col in columns)
    line = "  ".join(f"{{:{'>' if a == 'r' else '<'}{w}}}" for w, a in zip(widths, align)).format
    lines = [line(*headers).rstrip(), "  ".join("-" * w for w in widths)]
    lines += [line(*row).rstrip() for row in zip(*columns)]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("%", "").replace("e", "").isdigit()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


#: rows shown at each end of an allocation table cut short by ``max_rows``
TABLE_ENDS = 10


def cut_rows(rows: Sequence, max_rows: int) -> tuple[Sequence, int]:
    """The rows a table cut short by ``max_rows`` (0: never) shows -- its two ends past the limit -- and how many
    it leaves out between them."""
    if not max_rows or len(rows) <= max(max_rows, 2 * TABLE_ENDS):
        return rows, 0
    return rows[:TABLE_ENDS] + rows[-TABLE_ENDS:], len(rows) - 2 * TABLE_ENDS


def with_gap_line(text: str, line: str) -> str:
    """A table of its two ends (header and rule first) with ``line`` between them."""
    lines = text.split("\n")
    return "\n".join(lines[: 2 + TABLE_ENDS] + [line] + lines[2 + TABLE_ENDS :])


def allocation_table(alloc: Allocation, max_rows: int = 0) -> str:
    """Every layer's choice, one row each; with more layers than ``max_rows`` (0: no limit) only the first and last
    :data:`TABLE_ENDS`, a line between them saying how many are not shown. Written column by column with the cells
    :func:`_cell` would write (tens of thousands of layers: no type dispatch per cell, one format string per row)."""
    layers, hidden = cut_rows(alloc.layers, max_rows)
    columns = [
        [str(l.name) for l in layers],
        [str(l.kind) for l in layers],
        [str(l.method) for l in layers],
        [f"{l.rank:,}" for l in layers],
        [f"{l.params:,}" for l in layers],
        [_float4(round(l.utility, 4)) for l in layers],
        ["-" if l.gain is None else _float4(round(l.gain, 5)) for l in layers],
    ]
    text = _render_columns(("layer", "kind", "method", "rank", "params", "utility", "gain"), columns, "lllrrrr")
    if not hidden:
        return text
    return with_gap_line(text, f"... {hidden:,} more layers (all {len(alloc.layers):,}: --max-rows 0, --json or --output)")


def _float4(value) -> str:
    """:func:`_cell` of a rounded utility or gain (a float, or an int from a loaded file)."""
    return f"{value:.4g}" if type(value) is float else _cell(value)


def summary(alloc: Allocation) -> str:
    lo, hi = alloc.window
    lines = [
        f"status        {alloc.status.value}" + (f" — {alloc.message}" if alloc.message else ""),
        f"solver        {alloc.solver}" + ("" if alloc.warm_start is None else f" (warm start {'used' if alloc.warm_start else 'not used'})"),
    ]
    if alloc.objective is not None:
        lines += [
            f"objective     {alloc.objective:.6f}",
            f"bound         {alloc.bound:.6f}" if alloc.bound is not None else "bound         -",
            f"gap           {alloc.gap:.2e}" if alloc.gap is not None else "gap           -",
            f"total params  {alloc.total_params:,} of {alloc.budget:,}",
            f"utilization   {alloc.utilization:.1%} (window {lo:.0%}-{hi:.0%})",
            "methods       " + ", ".join(f"{m} x{n}" for m, n in alloc.method_counts().items()),
        ]
    lines.append("seconds       " + ", ".join(f"{k} {v:.3f}" for k, v in alloc.seconds.items()))
    for note in alloc.notes:
        lines.append(f"note          {note}")
    return "\n".join(lines)


def validation_table(metrics: Mapping[str, Any], constraints: Mapping[str, Any]) -> str:
    checks = verdicts(metrics, constraints)
    rows = []
    for name in THRESHOLDS:
        threshold = THRESHOLDS[name][0]
        if name == "budget_utilization":
            threshold = f"{constraints.get('min_utilization', DEFAULT_WINDOW[0]):.2f}-{constraints.get('max_utilization', DEFAULT_WINDOW[1]):.2f}"
        rows.append((name, _cell(metrics.get(name)), threshold, checks[name]))
    return table(("metric", "value", "threshold", "check"), rows, "lrll")


def compare_text(ilp: Allocation, heur: Allocation, max_rows: int = 0) -> str:
    """Both allocations layer by layer (with more layers than ``max_rows``, 0: no limit, only the first and last
    :data:`TABLE_ENDS` and a line saying how many are not shown and how many of all differ), their metrics side by
    side, and the objective difference."""
    names = [l.name for l in ilp.layers] or [l.name for l in heur.layers]
    a = {l.name: l for l in ilp.layers}
    b = {l.name: l for l in heur.layers}

    def cell(d, n):
        if n not in d:
            return "-"
        l = d[n]
        return l.method if METHODS[l.method].is_none else f"{l.method} r{l.rank}"

    rows = [(n, round((a.get(n) or b[n]).utility, 4), cell(a, n), cell(b, n), "" if cell(a, n) == cell(b, n) else "*") for n in names]
    shown, hidden = cut_rows(rows, max_rows)
    layers = table(("layer", "utility", ilp.solver, "heuristic", "differs"), shown, "lrlll")
    if hidden:
        differ = sum(1 for r in rows if r[4])
        layers = with_gap_line(layers, f"... {hidden:,} more layers ({differ:,} of all {len(rows):,} differ; every row: --max-rows 0 or --json)")
    out = [layers, ""]
    ca, cb = verdicts(ilp.metrics, ilp.constraints), verdicts(heur.metrics, heur.constraints)
    mrows = [
        ("status", ilp.status.value, heur.status.value),
        ("objective", ilp.objective, heur.objective),
        ("total_params", ilp.total_params, heur.total_params),
    ]
    for name in THRESHOLDS:
        mrows.append((name, f"{_cell(ilp.metrics.get(name))} {ca[name]}", f"{_cell(heur.metrics.get(name))} {cb[name]}"))
    out.append(table(("", ilp.solver, "heuristic"), mrows, "lll"))
    out.append("")
    if ilp.objective is not None and heur.objective is not None:
        diff = ilp.objective - heur.objective
        rel = diff / abs(heur.objective) if heur.objective else float("inf")
        out.append(f"objective difference: {ilp.solver} - heuristic = {diff:+.6f} ({rel:+.1%})")
    if heur.status.value == "infeasible" and heur.message:
        out.append(f"heuristic violates constraints: {heur.message}")
    else:
        out.append("heuristic violates no constraint")
    return "\n".join(out)
