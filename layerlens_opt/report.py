"""Plain-text tables for people: allocations, summaries, comparisons, validation."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from .methods import DEFAULT_WINDOW
from .metrics import THRESHOLDS, verdicts


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """Columns padded to width; ``align`` is one 'l'/'r' per column (default: numbers right)."""
    rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    align = align or "".join("r" if rows and _numeric(rows[0][i]) else "l" for i in range(len(headers)))

    def fmt(row):
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(row, widths, align)).rstrip()

    lines = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows]
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


def allocation_table(alloc: Mapping[str, Any]) -> str:
    rows = [
        (l["name"], l.get("kind", ""), l["method"], l["rank"], l["params"], round(l.get("utility", 0.0), 4), round(l.get("gain", 0.0), 5))
        for l in alloc["layers"]
    ]
    return table(("layer", "kind", "method", "rank", "params", "utility", "gain"), rows, "lllrrrr")


def summary(alloc: Mapping[str, Any]) -> str:
    sec = alloc.get("seconds") or {}
    window = alloc.get("utilization_window") or [None, None]
    lines = [
        f"status        {alloc['status']}" + (f" — {alloc['message']}" if alloc.get("message") else ""),
        f"solver        {alloc['solver']}" + ("" if alloc.get("warm_start") is None else f" (warm start {'used' if alloc['warm_start'] else 'not used'})"),
    ]
    if alloc.get("objective") is not None:
        gap = alloc.get("gap")
        lines += [
            f"objective     {alloc['objective']:.6f}",
            f"bound         {alloc['bound']:.6f}" if alloc.get("bound") is not None else "bound         -",
            f"gap           {gap:.2e}" if gap is not None else "gap           -",
            f"total params  {alloc['total_params']:,} of {alloc['budget']:,}",
            f"utilization   {alloc['utilization']:.1%} (window {window[0]:.0%}-{window[1]:.0%})",
        ]
        used = {}
        for l in alloc["layers"]:
            used[l["method"]] = used.get(l["method"], 0) + 1
        lines.append("methods       " + ", ".join(f"{m} x{n}" for m, n in sorted(used.items())))
    lines.append("seconds       " + ", ".join(f"{k} {v:.3f}" for k, v in sec.items()))
    for note in alloc.get("notes") or ():
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


def compare_text(ilp: Mapping[str, Any], heur: Mapping[str, Any]) -> str:
    """Both allocations layer by layer, their metrics side by side, and the objective difference."""
    names = [l["name"] for l in ilp["layers"]] or [l["name"] for l in heur["layers"]]
    a = {l["name"]: l for l in ilp["layers"]}
    b = {l["name"]: l for l in heur["layers"]}

    def cell(d, n):
        if n not in d:
            return "-"
        l = d[n]
        return l["method"] if l["method"] == "none" else f"{l['method']} r{l['rank']}"

    rows = [(n, round(a.get(n, b.get(n, {})).get("utility", 0.0), 4), cell(a, n), cell(b, n), "" if cell(a, n) == cell(b, n) else "*") for n in names]
    out = [table(("layer", "utility", ilp["solver"], "heuristic", "differs"), rows, "lrlll"), ""]
    ca, cb = verdicts(ilp["metrics"], ilp["constraints"]), verdicts(heur["metrics"], heur["constraints"])
    mrows = [
        ("status", ilp["status"], heur["status"]),
        ("objective", ilp.get("objective"), heur.get("objective")),
        ("total_params", ilp.get("total_params"), heur.get("total_params")),
    ]
    for name in THRESHOLDS:
        mrows.append((name, f"{_cell(ilp['metrics'].get(name))} {ca[name]}", f"{_cell(heur['metrics'].get(name))} {cb[name]}"))
    out.append(table(("", ilp["solver"], "heuristic"), mrows, "lll"))
    out.append("")
    if ilp.get("objective") is not None and heur.get("objective") is not None:
        diff = ilp["objective"] - heur["objective"]
        rel = diff / abs(heur["objective"]) if heur["objective"] else float("inf")
        out.append(f"objective difference: {ilp['solver']} - heuristic = {diff:+.6f} ({rel:+.1%})")
    if heur["status"] == "infeasible" and heur.get("message"):
        out.append(f"heuristic violates constraints: {heur['message']}")
    else:
        out.append("heuristic violates no constraint")
    return "\n".join(out)
