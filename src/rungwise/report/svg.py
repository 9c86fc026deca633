"""Inline SVG charts, generated in Python: the report works offline and in one file.

Each function returns an ``<svg>`` string with a ``viewBox`` (so it scales with the page), a
``<title>`` for screen readers, and text escaped. No JavaScript is needed to draw them.

Example:
    >>> svg = bar_chart(["a", "b"], {"tokens": [10, 20]}, title="tokens per call")
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ["#2f6fdf", "#e07a1f", "#2a9d5c", "#c8445a", "#7b5cc4", "#8a6d3b", "#1f9fb0", "#777777"]
W, H = 640, 300
PAD_L, PAD_R, PAD_T, PAD_B = 76, 16, 36, 44


def _num(x: float) -> str:
    return f"{x:.1f}"


def _fmt_tick(v: float, unit: str = "") -> str:
    if unit == "$":
        if v == 0:
            return "$0"
        if abs(v) >= 1000:
            return f"${v / 1000:,.0f}k" if abs(v) >= 10_000 else f"${v / 1000:,.1f}k"
        return f"${v:,.0f}" if abs(v) >= 10 else (f"${v:.2f}" if abs(v) >= 1 else f"${v:.3g}")
    # Three significant digits: labels are for reading, the JSON has the exact numbers.
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M{unit}"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.3g}k{unit}"
    return f"{v:.3g}{unit}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi].

    >>> nice_ticks(0, 1)
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    """
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    out = [start]
    # Up to the first tick at or above hi, so the top tick bounds the data.
    while out[-1] < hi - step * 1e-9:
        out.append(start + step * len(out))
    return [round(v, 12) for v in out]


def _frame(title: str, body: list[str], w: int = W, h: int = H, css_class: str = "chart") -> str:
    return (
        f'<svg class="{css_class}" viewBox="0 0 {w} {h}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="12">'
        f"<title>{escape(title)}</title>"
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14" font-weight="600">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _legend(names: Sequence[str], x0: float, y: float) -> list[str]:
    out = []
    x = x0
    for i, n in enumerate(names):
        out.append(f'<rect x="{_num(x)}" y="{_num(y - 9)}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(f'<text x="{_num(x + 14)}" y="{_num(y)}">{escape(n)}</text>')
        x += 22 + 7 * len(n)
    return out


def score_chart(
    rungs: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
    *, metric: str, target: float | None = None, title: str | None = None,
) -> str:
    """Score with 95% CI per rung (horizontal whiskers), and the target as a dashed line."""
    n = max(len(rungs), 1)
    row = 34
    h = PAD_T + row * n + PAD_B
    lo = min([0.0, *lows, *([target] if target is not None else [])])
    hi = max([*highs, *([target] if target is not None else []), 1e-9])
    if lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    ticks = nice_ticks(lo, hi)
    lo, hi = ticks[0], ticks[-1]
    x0, x1 = 130, W - PAD_R - 10

    def sx(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    body: list[str] = []
    for t in ticks:
        body.append(f'<line x1="{_num(sx(t))}" x2="{_num(sx(t))}" y1="{PAD_T}" y2="{h - PAD_B}" stroke="#e3e3e3"/>')
        body.append(f'<text x="{_num(sx(t))}" y="{h - PAD_B + 16}" text-anchor="middle">{_fmt_tick(t)}</text>')
    body.append(f'<text x="{(x0 + x1) / 2}" y="{h - 8}" text-anchor="middle">{escape(metric)} (dot: estimate; bar: 95% CI)</text>')
    for i, name in enumerate(rungs):
        y = PAD_T + row * i + row / 2
        c = PALETTE[i % len(PALETTE)]
        body.append(f'<text x="{x0 - 8}" y="{_num(y + 4)}" text-anchor="end">{escape(name)}</text>')
        body.append(f'<line class="ci" x1="{_num(sx(lows[i]))}" x2="{_num(sx(highs[i]))}" y1="{_num(y)}" y2="{_num(y)}" '
                    f'stroke="{c}" stroke-width="4" stroke-linecap="round"/>')
        body.append(f'<circle class="point" cx="{_num(sx(values[i]))}" cy="{_num(y)}" r="6" fill="{c}" stroke="#fff"/>')
        body.append(f'<text x="{_num(sx(highs[i]) + 8)}" y="{_num(y + 4)}">{values[i]:.3f}</text>')
    if target is not None:
        tx = sx(target)
        body.append(f'<line class="target" x1="{_num(tx)}" x2="{_num(tx)}" y1="{PAD_T - 4}" y2="{h - PAD_B}" '
                    'stroke="#c8445a" stroke-width="2" stroke-dasharray="6 4"/>')
        body.append(f'<text x="{_num(tx)}" y="{PAD_T - 8 + 2}" text-anchor="middle" fill="#c8445a">target {target:g}</text>')
    return _frame(title or f"{metric} per rung with 95% CI", body, h=h)


def bar_chart(
    categories: Sequence[str], series: dict[str, Sequence[float]], *, title: str, unit: str = "",
    stacked: bool = False, y_label: str = "",
) -> str:
    """Vertical bars per category; several series side by side, or stacked."""
    names = list(series)
    n_cat = max(len(categories), 1)
    totals = [sum(series[s][i] for s in names) for i in range(len(categories))] if stacked else [
        max((series[s][i] for s in names), default=0) for i in range(len(categories))]
    top = max([*totals, 1e-12])
    ticks = nice_ticks(0, top)
    top = ticks[-1]
    x0, x1, y0, y1 = PAD_L, W - PAD_R, H - PAD_B, PAD_T + 14

    def sy(v: float) -> float:
        return y0 - v / top * (y0 - y1)

    body: list[str] = []
    for t in ticks:
        body.append(f'<line x1="{x0}" x2="{x1}" y1="{_num(sy(t))}" y2="{_num(sy(t))}" stroke="#e3e3e3"/>')
        body.append(f'<text x="{x0 - 6}" y="{_num(sy(t) + 4)}" text-anchor="end">{escape(_fmt_tick(t, unit))}</text>')
    if y_label:
        body.append(f'<text transform="translate(14 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
    slot = (x1 - x0) / n_cat
    bw = slot * 0.6 / (1 if stacked else max(len(names), 1))
    for i, cat in enumerate(categories):
        cx = x0 + slot * i + slot * 0.2
        base = 0.0
        for j, s in enumerate(names):
            v = float(series[s][i])
            c = PALETTE[j % len(PALETTE)]
            if stacked:
                body.append(f'<rect class="bar" x="{_num(cx)}" y="{_num(sy(base + v))}" width="{_num(bw)}" '
                            f'height="{_num(max(sy(base) - sy(base + v), 0))}" fill="{c}"><title>{escape(cat)} {escape(s)}: '
                            f"{escape(_fmt_tick(v, unit))}</title></rect>")
                base += v
            else:
                x = cx + bw * j
                body.append(f'<rect class="bar" x="{_num(x)}" y="{_num(sy(v))}" width="{_num(bw)}" '
                            f'height="{_num(max(y0 - sy(v), 0))}" fill="{c}"><title>{escape(cat)} {escape(s)}: '
                            f"{escape(_fmt_tick(v, unit))}</title></rect>")
                # Each bar gets its own label: small bars next to a tall one stay readable.
                body.append(f'<text x="{_num(x + bw / 2)}" y="{_num(sy(v) - 4)}" text-anchor="middle" '
                            f'font-size="10">{escape(_fmt_tick(v, unit))}</text>')
        if stacked:
            body.append(f'<text x="{_num(x0 + slot * i + slot / 2)}" y="{_num(sy(base) - 4)}" text-anchor="middle" '
                        f'font-size="11">{escape(_fmt_tick(round(base, 6), unit))}</text>')
        body.append(f'<text x="{_num(x0 + slot * i + slot / 2)}" y="{y0 + 16}" text-anchor="middle">{escape(cat)}</text>')
    if len(names) > 1:
        body += _legend(names, x0, H - 8)
    return _frame(title, body)


def line_chart(
    xs: Sequence[float], series: dict[str, Sequence[float]], *, title: str, x_label: str, y_label: str,
    log_x: bool = True, log_y: bool = False, unit: str = "", vline: tuple[float, str] | None = None,
    points: Sequence[tuple[float, float, str]] = (),
) -> str:
    """Lines over x (log-scaled by default), an optional vertical marker and labeled points."""
    names = list(series)
    ys = [y for s in names for y in series[s] if y is not None and y > 0] or [1.0]
    xs_pos = [x for x in xs if x > 0] or [1.0]
    x_lo, x_hi = min(xs_pos), max(xs_pos)
    if x_hi <= x_lo:
        x_hi = x_lo * 10
    y_lo = min(ys) if log_y else 0.0
    y_hi = max(ys)
    h = H + 24  # room for the x label and the legend under the ticks
    x0, x1, y0, y1 = PAD_L + 10, W - PAD_R, h - PAD_B - 24, PAD_T + 14

    def fx(x: float) -> float:
        if log_x:
            return x0 + (math.log10(max(x, 1e-12)) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo)) * (x1 - x0)
        return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)

    if log_y:
        lo_e, hi_e = math.floor(math.log10(y_lo)), math.ceil(math.log10(y_hi))
        if hi_e == lo_e:
            hi_e += 1
        yticks = [10.0**e for e in range(lo_e, hi_e + 1)]
        y_lo, y_hi = yticks[0], yticks[-1]
    else:
        yticks = nice_ticks(0, y_hi)
        y_hi = yticks[-1]

    def fy(y: float) -> float:
        if log_y:
            return y0 - (math.log10(max(y, 1e-12)) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)) * (y0 - y1)
        return y0 - (y - y_lo) / (y_hi - y_lo) * (y0 - y1)

    body: list[str] = []
    for t in yticks:
        body.append(f'<line x1="{x0}" x2="{x1}" y1="{_num(fy(t))}" y2="{_num(fy(t))}" stroke="#e3e3e3"/>')
        body.append(f'<text x="{x0 - 6}" y="{_num(fy(t) + 4)}" text-anchor="end">{escape(_fmt_tick(t, unit))}</text>')
    if log_x:
        e0, e1 = math.floor(math.log10(x_lo)), math.ceil(math.log10(x_hi))
        xt = [m * 10.0**e for e in range(e0, e1 + 1) for m in (1, 3) if x_lo <= m * 10.0**e <= x_hi]
    else:
        xt = nice_ticks(x_lo, x_hi)
    for t in xt:
        body.append(f'<line x1="{_num(fx(t))}" x2="{_num(fx(t))}" y1="{y1}" y2="{y0}" stroke="#eeeeee"/>')
        body.append(f'<text x="{_num(fx(t))}" y="{y0 + 16}" text-anchor="middle">{escape(_fmt_tick(t))}</text>')
    body.append(f'<text x="{(x0 + x1) / 2}" y="{h - 26}" text-anchor="middle">{escape(x_label)}</text>')
    body.append(f'<text transform="translate(14 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
    for j, s in enumerate(names):
        pts = [(fx(x), fy(y)) for x, y in zip(xs, series[s], strict=False) if y is not None and x > 0 and (y > 0 or not log_y)]
        if not pts:
            continue
        d = " ".join(f"{_num(px)},{_num(py)}" for px, py in pts)
        body.append(f'<polyline class="line" fill="none" stroke="{PALETTE[j % len(PALETTE)]}" stroke-width="2.5" '
                    f'points="{d}"><title>{escape(s)}</title></polyline>')
    if vline is not None:
        vx = fx(vline[0])
        body.append(f'<line class="vline" x1="{_num(vx)}" x2="{_num(vx)}" y1="{y1}" y2="{y0}" stroke="#333" '
                    'stroke-dasharray="4 4"/>')
        body.append(f'<text x="{_num(vx + 4)}" y="{y1 + 10}">{escape(vline[1])}</text>')
    for px, py, label in points:
        if px <= 0 or (log_y and py <= 0):
            continue
        cx, cy = fx(px), fy(py)
        body.append(f'<circle class="marker" cx="{_num(cx)}" cy="{_num(cy)}" r="5" fill="#fff" stroke="#000" '
                    f'stroke-width="2"><title>{escape(label)}</title></circle>')
        body.append(f'<text x="{_num(cx + 7)}" y="{_num(cy - 7)}" font-size="11">{escape(label)}</text>')
    body += _legend(names, x0, h - 6)
    return _frame(title, body, h=h)
