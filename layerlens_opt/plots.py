"""Pictures for people: allocations across layers, objective vs budget (matplotlib, optional)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import LayerlensError
from .methods import METHOD_NAMES, METHODS

if TYPE_CHECKING:
    from .allocation import Allocation


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LayerlensError("plots need matplotlib: pip install 'layerlens-opt[plot]'") from None
    return plt


#: image formats written (the file name's extension chooses)
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")


def check_image_path(path: str) -> None:
    """A plot needs a file name ending in a known image extension; say which ones otherwise."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in str(path).rsplit("/", 1)[-1] else ""
    if suffix not in IMAGE_FORMATS:
        raise LayerlensError(f"cannot plot to {path}: the file name must end in one of {', '.join('.' + f for f in IMAGE_FORMATS)}")


def _save(fig, path: str, plt) -> None:
    """Through the one atomic writer (temp file + rename), then close the figure."""
    from .io import write_atomic

    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format=str(path).rsplit(".", 1)[-1].lower()), (), "plot")
    finally:
        plt.close(fig)


def _row_label(name: str, block: int | None) -> str:
    """The module's name inside its block (``attention.self.query``), or the whole name."""
    if block is None:
        return name
    m = re.search(rf"(?:^|\.){block}\.(.+)$", name)
    return m.group(1) if m else name


def plot_allocation(allocation: Allocation, path: str) -> None:
    """Heatmap: columns are blocks, rows are modules; colour = method, text = rank."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    layers = allocation.layers
    if not layers:
        raise LayerlensError("the allocation has no layers to plot (was it infeasible?)")
    rows: list[str] = []
    blocks = sorted({l.block for l in layers if l.block is not None})
    col = {b: i for i, b in enumerate(blocks)}
    cells = {}
    for i, l in enumerate(layers):
        label = _row_label(l.name, l.block)
        if label not in rows:
            rows.append(label)
        c = col[l.block] if l.block is not None else 0
        cells[(rows.index(label), c)] = l
    n_cols = max(1, len(blocks))
    grid = [[0] * n_cols for _ in rows]
    for (r, c), l in cells.items():
        grid[r][c] = METHOD_NAMES.index(l.method)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * n_cols + 3), max(2.5, 0.45 * len(rows) + 1.5)))
    ax.imshow(grid, cmap=ListedColormap([METHODS[m].color for m in METHOD_NAMES]), vmin=0, vmax=len(METHOD_NAMES) - 1, aspect="auto")
    for (r, c), l in cells.items():
        if not METHODS[l.method].is_none:
            ax.text(c, r, str(l.rank), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels([str(b) for b in blocks] if blocks else [""])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_xlabel("block")
    used = [m for m in METHOD_NAMES if m in allocation.method_counts()]
    ax.legend(handles=[Patch(color=METHODS[m].color, label=m) for m in used], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(f"{allocation.solver} allocation: {allocation.total_params:,} of "
                 f"{allocation.budget:,} params ({allocation.utilization:.0%}); numbers are ranks", fontsize=9)
    fig.tight_layout()
    _save(fig, path, plt)


def plot_frontier(points: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
    """Objective vs budget for the exact solver and the heuristic; broken heuristic points are hollow."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, style, label in (("exact", "-o", "ILP (exact)"), ("heuristic", "--s", "threshold heuristic")):
        xs = [p["budget"] for p in points if p[key] is not None]
        ys = [p[key] for p in points if p[key] is not None]
        line, = ax.plot(xs, ys, style, label=label)
        bad = [(p["budget"], p[key]) for p in points if p[key] is not None and p[f"{key}_status"] == "infeasible"]
        if bad:
            ax.plot(*zip(*bad), "o", mfc="white", mec=line.get_color(), ms=9, label=f"{label}: breaks a constraint")
    ax.set_xlabel("budget (trainable parameters)")
    ax.set_ylabel("objective (utility-weighted gain)")
    ax.set_title(f"utility vs budget {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path, plt)
