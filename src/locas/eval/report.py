"""Small reporting helpers: aligned text tables, CSV, JSON, and line/bar plots (matplotlib Agg).

    >>> print(format_table(["method", "ppl"], [["locas", 21.3]]))
    >>> write_json(out / "results.json", payload)          # atomic
    >>> line_plot(out / "curve.png", {"locas": (xs, ys)}, xlabel="tokens", ylabel="ppl")
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..core.files import atomic_write
from ..extras import require


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:  # NaN: nothing to report (e.g. a category with no questions)
            return "-"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(header: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def write_json(path, payload) -> Path:
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))


def write_csv(path, header: list[str], rows: list[list]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(buf.getvalue()))


def plt_agg():
    """matplotlib's pyplot on the Agg backend (files only, no display), or a one-line error naming the extra."""
    require("matplotlib", "plotting a report")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_plot(path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str = "",
              logy: bool = False, logx: bool = False) -> Path:
    plt = plt_agg()
    many = len(series) > 8  # then a wider figure, the legend beside it, and no colour used twice
    fig, ax = plt.subplots(figsize=(9.5 if many else 7, 4.8 if many else 4.2), dpi=120)
    colours = plt.get_cmap("tab20").colors if many else [None] * len(series)
    for (name, (xs, ys)), colour in zip(series.items(), colours):
        ax.plot(xs, ys, label=name, linewidth=1.6, color=colour, marker="o" if many else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend()
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def bar_plot(path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str = "") -> Path:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(series)) / 2), 4.2), dpi=120)
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def scatter_plot(path, points: dict[str, list[tuple[float, float, str]]], xlabel: str, ylabel: str, title: str = "",
                 logx: bool = False, hlines: dict[str, float] | None = None, join: bool = False) -> Path:
    """One marker colour per family in ``points`` (name -> [(x, y, label)]), each point labelled; ``join`` links a
    family's points in order (a sweep); ``hlines`` draws named reference levels (e.g. the document in the prompt).

        >>> scatter_plot("frontier.png", {"Locas": [(0.02, 0.6, "lr 0.1")]}, "KL", "NLL ratio", logx=True)
    """
    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for name, pts in points.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        line, = ax.plot(xs, ys, marker="o", linewidth=1.0, linestyle="-" if join else "none", label=name)
        for x, y, label in pts:
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=line.get_color())
    for name, level in (hlines or {}).items():
        ax.axhline(level, color="grey", linestyle="--", linewidth=0.8)
        ax.text(0.01, level, name, transform=ax.get_yaxis_transform(), fontsize=7, color="grey", va="bottom")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)
