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


#: past this many rows or block columns the heatmap aggregates: each cell is the most common method of a tile of layers
MAX_ROWS, MAX_COLS = 80, 160


def plot_allocation(allocation: Allocation, path: str) -> None:
    """Heatmap: columns are blocks, rows are modules; colour = method, text = rank. Past :data:`MAX_ROWS` rows or
    :data:`MAX_COLS` blocks, tiles of layers are drawn as one cell in their most common method (no rank text), so a
    model of any size gives a readable picture in about a second."""
    import numpy as np

    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    layers = allocation.layers
    if not layers:
        raise LayerlensError("the allocation has no layers to plot (was it infeasible?)")
    blocks = sorted({l.block for l in layers if l.block is not None})
    col = {b: i for i, b in enumerate(blocks)}
    row_of: dict[str, int] = {}
    r_idx, c_idx, m_idx, ranks = [], [], [], []
    for l in layers:
        r_idx.append(row_of.setdefault(_row_label(l.name, l.block), len(row_of)))
        c_idx.append(col[l.block] if l.block is not None else 0)
        m_idx.append(METHOD_NAMES.index(l.method))
        ranks.append(l.rank)
    rows = list(row_of)
    n_rows, n_cols = len(rows), max(1, len(blocks))
    r_idx, c_idx, m_idx = np.array(r_idx), np.array(c_idx), np.array(m_idx)
    by_order = not blocks and n_rows > MAX_ROWS  # no blocks: the layers in order, wrapped into columns
    if by_order:
        order = np.arange(len(layers))
        r_idx, c_idx = order % MAX_ROWS, order // MAX_ROWS
        n_rows, n_cols = MAX_ROWS, int(c_idx.max()) + 1
        blocks = [f"{i * MAX_ROWS:,}" for i in range(n_cols)]
        rows = [f"+{i}" for i in range(MAX_ROWS)]
    tile_r, tile_c = -(-n_rows // MAX_ROWS), -(-n_cols // MAX_COLS)
    aggregated = tile_r > 1 or tile_c > 1
    g_rows, g_cols = -(-n_rows // tile_r), -(-n_cols // tile_c)
    counts = np.zeros((g_rows, g_cols, len(METHOD_NAMES)), dtype=np.int64)
    np.add.at(counts, (r_idx // tile_r, c_idx // tile_c, m_idx), 1)
    grid = np.ma.masked_array(counts.argmax(axis=2), mask=counts.sum(axis=2) == 0)
    fig, ax = plt.subplots(figsize=(min(24, max(6, 0.5 * g_cols + 3)), min(18, max(2.5, 0.45 * g_rows + 1.5))))
    ax.imshow(grid, cmap=ListedColormap([METHODS[m].color for m in METHOD_NAMES]), vmin=0, vmax=len(METHOD_NAMES) - 1,
              aspect="auto", interpolation="nearest")
    if not aggregated:
        for r, c, m, k in zip(r_idx.tolist(), c_idx.tolist(), m_idx.tolist(), ranks):
            if not METHODS[METHOD_NAMES[m]].is_none:
                ax.text(c, r, str(k), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(n_cols))
        ax.set_xticklabels([str(b) for b in blocks] if blocks else [""])
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels(rows, fontsize=8)
        ax.set_xlabel("block")
    else:
        step_c = max(1, g_cols // 12)
        ax.set_xticks(range(0, g_cols, step_c))
        ax.set_xticklabels([str(blocks[min(i * tile_c, len(blocks) - 1)]) if blocks else "" for i in range(0, g_cols, step_c)])
        step_r = max(1, g_rows // 30)
        ax.set_yticks(range(0, g_rows, step_r))
        ax.set_yticklabels([rows[i * tile_r] for i in range(0, g_rows, step_r)], fontsize=7)
        ax.set_xlabel(f"layers in manifest order, {MAX_ROWS} a column (the first layer of each)" if by_order
                      else f"block (each column {tile_c} blocks)" if tile_c > 1 else "block")
    used = [m for m in METHOD_NAMES if m in allocation.method_counts()]
    ax.legend(handles=[Patch(color=METHODS[m].color, label=m) for m in used], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    what = (f"{len(layers):,} layers; each cell the most common method of {tile_r * tile_c if not by_order else tile_c} "
            "layers" if aggregated else "numbers are ranks")
    ax.set_title(f"{allocation.solver} allocation: {allocation.total_params:,} of "
                 f"{allocation.budget:,} params ({allocation.utilization:.0%})\n{what}", fontsize=9)
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
