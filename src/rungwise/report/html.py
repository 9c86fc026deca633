"""The HTML report: one self-contained file (inline CSS, inline SVG charts, a little inline JS to
browse per-example results), readable offline and with JavaScript off.

Example:
    >>> page = render_html({"task": "demo", "rungs": []})
    >>> "No rung was measured" in page
    True
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from rungwise.money import usd
from rungwise.report import svg
from rungwise.report.data import catalog_line, comparison_cell, meets_cell, pricing_lines, what_if_model

MARKER = '<meta name="generator" content="rungwise">'
MAX_EXAMPLE_ROWS = 5000

_CSS = """
:root { color-scheme: light; --ok: #e6f4ea; --bad: #fde8e8; --inv: #fff4d6; --line: #ddd; }
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 16px 24px 48px; color: #1d1d1f; }
h1 { font-size: 24px; margin: 8px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
.meta { color: #555; margin: 0 0 12px; }
.verdict { border: 2px solid #2a9d5c; border-radius: 8px; padding: 10px 16px; background: #f3fbf6; }
.verdict.none { border-color: #d39e00; background: #fffbeb; }
.verdict h3 { margin: 4px 0 8px; font-size: 16px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }
.charts figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.charts svg { width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 12px; padding: 2px 6px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
#examples td { max-width: 360px; } #examples td div { max-height: 7.5em; overflow: auto; white-space: pre-wrap; }
tr.what-if td { color: #666; font-style: italic; }
td.ok { background: var(--ok); } td.bad { background: var(--bad); } td.invalid { background: var(--inv); }
.controls { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin: 8px 0; }
.small { color: #666; font-size: 12px; } code { background: #f5f5f7; padding: 0 3px; border-radius: 3px; }
"""

_JS = """
(function () {
  var table = document.getElementById('example-table');
  if (!table) { return; }
  var rows = Array.prototype.slice.call(table.tBodies[0].rows);
  var rung = document.getElementById('ex-rung');
  var fails = document.getElementById('ex-fail');
  var query = document.getElementById('ex-q');
  var count = document.getElementById('ex-count');
  function apply() {
    var r = rung.value, onlyFail = fails.checked, q = query.value.toLowerCase(), shown = 0;
    rows.forEach(function (tr) {
      var failed = (tr.getAttribute('data-fail') || '').split(' ').filter(Boolean);
      var ok = true;
      if (onlyFail) { ok = r === '*' ? failed.length > 0 : failed.indexOf(r) >= 0; }
      if (ok && q) { ok = tr.textContent.toLowerCase().indexOf(q) >= 0; }
      tr.style.display = ok ? '' : 'none';
      if (ok) { shown += 1; }
    });
    count.textContent = shown + ' of ' + rows.length + ' examples shown';
  }
  rung.addEventListener('change', apply);
  fails.addEventListener('change', apply);
  query.addEventListener('input', apply);
  apply();
})();
"""


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element whatever its strings hold.

    Escaping ``</`` is not enough: ``<!--<script>`` in a string puts the HTML tokenizer in its
    "double escaped" state, where the element's own ``</script>`` no longer ends it and the
    page's scripts stop. ``<``, ``>`` and ``&`` (and U+2028/U+2029, for parsers that read the
    text as JavaScript) become JSON ``\\u`` escapes, which ``JSON.parse`` reads back unchanged.

    >>> text = script_json({"task": "<!--<script>"})
    >>> "<" in text, json.loads(text)
    (False, {'task': '<!--<script>'})
    """
    text = json.dumps(value)  # ensure_ascii (the default) already escapes U+2028 and U+2029
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(x: Any) -> str:
    return escape("" if x is None else str(x))


def _f(x: Any, nd: int = 3) -> str:
    return "—" if x is None else f"{float(x):.{nd}f}"


def _verdict_html(v: dict[str, Any] | None) -> str:
    if not v:
        return '<section class="verdict none"><h3>No verdict</h3><p>This run was not priced or judged.</p></section>'
    cls = "verdict" if v.get("recommended") else "verdict none"
    out = [f'<section id="verdict" class="{cls}"><h3>{_e(v.get("headline"))}</h3>']
    if v.get("gap"):
        out.append(f"<p><b>Measured gap:</b> {_e(v['gap'])}</p>")
    for key, label in (("reasons", "Reasons"), ("warnings", "Warnings"), ("next_steps", "Next steps")):
        items = v.get(key) or []
        if items:
            out.append(f"<p><b>{label}</b></p><ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>")
    out.append("</section>")
    return "".join(out)


def _charts(data: dict[str, Any]) -> str:
    rungs = data.get("rungs") or []
    if not rungs:
        return "<p>No rung was measured: no charts.</p>"
    names = [r["name"] for r in rungs]
    metric = data.get("metric") or rungs[0]["metric"].get("name", "score")
    target_val = None
    if data.get("target"):
        try:
            from rungwise.config.task import parse_target

            target_val = parse_target(data["target"]).value
        except ValueError:
            target_val = None
    figs = []
    figs.append((svg.score_chart(names, [r["metric"]["value"] for r in rungs], [r["metric"]["ci_low"] for r in rungs],
                                 [r["metric"]["ci_high"] for r in rungs], metric=metric, target=target_val),
                 f"Score per rung on {rungs[0]['metric'].get('n', '?')} held-out examples; bars are 95% bootstrap CIs."))
    cached = [float(r.get("mean_cached_tokens") or 0) for r in rungs]
    prompt = [max(float(r.get("mean_prompt_tokens") or 0) - c, 0) for r, c in zip(rungs, cached, strict=True)]
    compl = [float(r.get("mean_completion_tokens") or 0) for r in rungs]
    figs.append((svg.bar_chart(names, {"shared prefix (cacheable)": cached, "rest of prompt": prompt,
                                       "completion": compl}, title="tokens per call", stacked=True, y_label="tokens"),
                 "Mean tokens per call: the shared prefix (system prompt + fixed demos) can be served from a prompt cache."))
    econ = data.get("economics") or {}
    vol = econ.get("daily_volume")
    what_if = what_if_model(data)
    series: dict[str, list[float]] = {}
    for mode, name in (("self_hosted", "self-hosted"), ("hosted", "hosted"), ("what_if", f"what-if: {what_if}")):
        vals = [((r.get("cost") or {}).get(mode) or {}).get("per_1k_usd") for r in rungs]
        if any(x is not None for x in vals):
            series[name] = [x or 0.0 for x in vals]
    if series:
        figs.append((svg.bar_chart(names, series, title="cost per 1,000 requests", unit="$", y_label="USD"),
                     (f"At {vol:,} requests/day" if vol else "Cost per 1,000 requests")
                     + (". Self-hosted includes idle server time" if "self-hosted" in series else "")
                     + (f". The what-if prices these token counts on {what_if}, a model this climb did not measure."
                        if what_if and f"what-if: {what_if}" in series else ".")))
    curves = econ.get("curves") or {}
    if curves.get("series"):
        pts = []
        for be in econ.get("break_evens") or []:
            x = be.get("volume_per_day")
            if x and curves["volumes"][0] <= x <= curves["volumes"][-1]:
                ft = be["finetune"]
                xs = curves["volumes"]
                # The break-even cost: interpolate the fine-tuned rung's line at x.
                ys = curves["series"].get(ft) or []
                y = _interp(xs, ys, x)
                pts.append((x, y, f"break-even {ft} vs {be['against']}: {x:,.0f}/day"))
        figs.append((svg.line_chart(curves["volumes"], curves["series"], title="monthly cost vs daily volume",
                                    x_label="requests per day (log scale)", y_label="USD per month (log scale)",
                                    log_y=True, unit="$", vline=(vol, f"your volume {vol:,}/day") if vol else None,
                                    points=pts),
                     "Total monthly cost of each rung's cheapest deployment, one-off training and labeling amortized; "
                     "circles mark break-even volumes."))
    p50 = [float(r.get("latency_p50_s") or 0) for r in rungs]
    p95 = [float(r.get("latency_p95_s") or 0) for r in rungs]
    # Milliseconds for fast rungs, seconds once any p95 passes a second.
    scale, unit, word = (1.0, " s", "seconds") if max(p95, default=0) >= 1 else (1000.0, " ms", "milliseconds")
    figs.append((svg.bar_chart(names, {"p50": [scale * x for x in p50], "p95": [scale * x for x in p95]},
                               title="latency per request", unit=unit, y_label=word),
                 "Measured on the climb's hardware and backend (batched generation shares time across a batch)."))
    return '<div class="charts">' + "".join(
        f"<figure>{s}<figcaption>{_e(c)}</figcaption></figure>" for s, c in figs) + "</div>"


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    for i in range(1, min(len(xs), len(ys))):
        if xs[i] >= x:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            if y0 is None or y1 is None:
                return y1 or y0 or 0.0
            t = 0 if x1 == x0 else (x - x0) / (x1 - x0)
            return y0 + t * (y1 - y0)
    return ys[-1] if ys else 0.0


def _ladder_table(data: dict[str, Any]) -> str:
    rows = []
    for r in data.get("rungs") or []:
        m = r["metric"]
        p = comparison_cell(r)
        meets = meets_cell(data, r)
        rows.append(
            f"<tr><td>{_e(r['name'])}</td><td>{_e(r.get('kind', ''))}</td>"
            f"<td class='num'>{_f(m['value'])} [{_f(m['ci_low'])}, {_f(m['ci_high'])}]</td>"
            f"<td class='num'>{100 * float(r.get('format_valid_rate') or 0):.1f}%</td>"
            f"<td class='num'>{float(r.get('mean_prompt_tokens') or 0):,.0f} ({float(r.get('mean_cached_tokens') or 0):,.0f})"
            f" + {float(r.get('mean_completion_tokens') or 0):,.1f}</td>"
            f"<td class='num'>{1000 * float(r.get('latency_p50_s') or 0):,.0f} / {1000 * float(r.get('latency_p95_s') or 0):,.0f} ms</td>"
            f"<td class='num'>{float(r.get('examples_per_s') or 0):.2f}</td><td class='num'>{_failures(r)}</td>"
            f"<td>{_e(p)}</td><td>{meets}</td></tr>"
        )
    return ("<table id='ladder-table'><thead><tr><th>rung</th><th>kind</th><th>metric [95% CI]</th><th>format-valid</th>"
            "<th>tokens/call (cached) + completion</th><th>latency p50 / p95</th><th>examples/s</th>"
            "<th title='failed examples: wrong format (behaviour) / valid but wrong content (knowledge)'>failures "
            "format / content</th><th>vs rung below</th><th>meets target</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _failures(r: dict[str, Any]) -> str:
    f = r.get("failures") or {}
    return f"{f['behaviour']} / {f['knowledge']}" if f else "—"


def _cost_table(data: dict[str, Any]) -> str:
    rows = []
    for r in data.get("rungs") or []:
        c = r.get("cost")
        if not c:
            continue
        for mode in ("self_hosted", "hosted", "what_if"):
            d = c.get(mode)
            if not d:
                continue
            one = d.get("one_off")
            one_txt = "—"
            if one:
                one_txt = (f"{usd(one['initial_usd'])} (training {usd(one['training_usd'])}: {one['training_basis']}; "
                           f"labeling {usd(one['labeling_usd'])}: {one['labeling_basis']})")
                if one.get("retrain_every_days"):
                    one_txt += f"; retrain every {one['retrain_every_days']} days at {usd(one['retrain_usd'])}"
            extra = ""
            if mode == "hosted" and d.get("cache_hit_rate"):
                extra = f" ({100 * d['cache_hit_rate']:.0f}% cache hits)"
            if mode == "self_hosted":
                extra = f" ({d.get('replicas', 1)} server(s))"
            notes = "; ".join(d.get("notes") or [])
            best = " ✔" if c.get("best") == mode else ""
            shown = "what-if (not measured)" if mode == "what_if" else mode.replace("_", "-")
            rows.append(
                f"<tr{' class=what-if' if mode == 'what_if' else ''}><td>{_e(r['name'])}</td><td>{_e(shown)}{best}</td>"
                f"<td>{_e(d['label'])}</td>"
                f"<td class='num'>{usd(d['per_1k_usd'])}{_e(extra)}</td><td class='num'>{usd(d['monthly_usd'])}</td>"
                f"<td>{_e(one_txt)}</td><td class='num'>{usd(d['total_monthly_usd'])}</td><td class='small'>{_e(notes)}</td></tr>"
            )
    if not rows:
        return "<p>No prices: set <code>economics</code> in task.yaml.</p>"
    econ = data.get("economics") or {}
    bes = "".join(f"<li>{_e(b.get('sentence'))}</li>" for b in econ.get("break_evens") or [])
    vol = econ.get("daily_volume")
    head = (f"<p>At <b>{vol:,}</b> requests/day. ✔ = the rung's cheapest deployment of the measured model; a "
            "what-if row prices the same token counts on another model and is never picked.</p>" if vol else "")
    basis = "".join(f"<li>{_e(x)}</li>" for x in pricing_lines(econ.get("pricing")))
    return (head + "<table id='cost-table'><thead><tr><th>rung</th><th>deployment</th><th>priced as</th><th>$ / 1k requests</th>"
            "<th>running $/month</th><th>one-off</th><th>total $/month</th><th>notes</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>" + (f"<p><b>Break-even</b></p><ul>{bes}</ul>" if bes else "")
            + (f"<p><b>What the prices rest on</b></p><ul id='pricing'>{basis}</ul>" if basis else ""))


def _factors_table(v: dict[str, Any] | None) -> str:
    sigs = (v or {}).get("signals") or []
    if not sigs:
        return "<p>No decision factors set (see <code>factors:</code> in task.yaml or <code>rungwise decide</code>).</p>"
    rows = "".join(
        f"<tr><td>{_e(s['factor'])}</td><td>{_e(s['value'])}</td>"
        f"<td>{'—' if s['favours'] == 'neutral' else _e(s['strength'] + ' ' + s['favours'].replace('_', ' '))}</td>"
        f"<td>{_e(s['rule'])}</td></tr>" for s in sigs)
    return ("<table id='factors-table'><thead><tr><th>factor</th><th>value</th><th>says</th><th>rule</th></tr></thead>"
            f"<tbody>{rows}</tbody></table><p>The factors alone lean: <b>{_e((v or {}).get('factors_lean'))}</b>.</p>")


def _examples(data: dict[str, Any]) -> str:
    exs = data.get("examples") or []
    names = [r["name"] for r in data.get("rungs") or []]
    if not exs:
        return "<p>No per-example results in this report.</p>"
    shown = exs[:MAX_EXAMPLE_ROWS]
    body = []
    for i, ex in enumerate(shown, 1):
        per = ex.get("rungs") or {}
        failed = [n for n in names if n in per and (per[n].get("score") is None or float(per[n]["score"]) < 1.0)]
        cells = []
        for n in names:
            p = per.get(n)
            if p is None:
                cells.append("<td>—</td>")
                continue
            sc = p.get("score")
            cls = "invalid" if p.get("valid") is False else ("ok" if sc is not None and float(sc) >= 1.0 else "bad")
            trace = p.get("trace")
            shown_trace = f"<div class='small trace'>{_e(_trace_text(trace))}</div>" if trace else ""
            cells.append(f"<td class='{cls}' title='score {_e(sc)}'><div>{_e(p.get('prediction'))}</div>{shown_trace}</td>")
        body.append(
            f"<tr data-fail='{_e(' '.join(failed))}'><td class='num'>{i}</td><td class='small'>{_e(ex.get('source'))}</td>"
            f"<td><div>{_e(ex.get('input'))}</div></td><td><div>{_e(ex.get('expected'))}</div></td>{''.join(cells)}</tr>"
        )
    opts = "".join(f"<option value='{_e(n)}'>{_e(n)}</option>" for n in names)
    more = (f"<p class='small'>Showing the first {MAX_EXAMPLE_ROWS:,} of {len(exs):,} examples; the JSON report has all.</p>"
            if len(exs) > MAX_EXAMPLE_ROWS else "")
    return (
        "<div class='controls'><label>rung <select id='ex-rung'><option value='*'>any</option>" + opts + "</select></label>"
        "<label><input type='checkbox' id='ex-fail'> failures only</label>"
        "<label>search <input type='search' id='ex-q' placeholder='text in input, expected or prediction'></label>"
        "<span id='ex-count' class='small'></span></div>" + more +
        "<p class='small'>Green: correct; red: wrong; yellow: not in a valid format.</p>"
        "<table id='example-table'><thead><tr><th>#</th><th>source</th><th>input</th><th>expected</th>"
        + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"
    )


def _trace_text(trace: dict[str, Any]) -> str:
    """A per-example trace in one line: what was retrieved (ids and scores), the constraint, the demos."""
    parts = []
    for key, value in trace.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value[:8]) + (" ..." if len(value) > 8 else "")
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def render_html(data: dict[str, Any]) -> str:
    """The whole report page as one string (see :mod:`rungwise.report.data` for ``data``)."""
    title = f"rungwise report: {data.get('task', '?')}" + (f" (run {data['run_id']})" if data.get("run_id") else "")
    meta = " · ".join(_e(x) for x in [
        f"model {data['model']}" if data.get("model") else None,
        f"target {data['target']}" if data.get("target") else "no target",
        f"{data.get('n_test')} test examples" if data.get("n_test") is not None else None,
        f"{data['n_train']} train" if data.get("n_train") else None,
        f"{data['leakage_dropped']} leaked test rows dropped" if data.get("leakage_dropped") else None,
        f"created {data['created_at']}" if data.get("created_at") else None,
        catalog_line(data),
    ] if x)
    notes = "".join(f"<li>{_e(n)}</li>" for n in data.get("notes") or [])
    embedded = script_json({"task": data.get("task"), "run_id": data.get("run_id")})
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>" + MARKER +
        "<link rel='icon' href='data:,'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class='meta'>{meta}</p>"
        + (f"<p>{_e(data['description'])}</p>" if data.get("description") else "")
        + "<h2>Verdict</h2>" + _verdict_html(data.get("verdict"))
        + "<h2>Charts</h2>" + _charts(data)
        + "<h2>The ladder</h2>" + _ladder_table(data)
        + "<h2 id='costs'>Cost</h2>" + _cost_table(data)
        + "<h2>Decision factors</h2>" + _factors_table(data.get("verdict"))
        + "<h2 id='examples'>Per-example results</h2>" + _examples(data)
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + f"<p class='small'>Generated by rungwise {_e(data.get('version', ''))}. Prices are dated list prices "
        "from the shipped catalog or task.yaml (<code>rungwise prices</code>); token counts come from the climb's "
        "tokenizer, and a hosted model's tokenizer counts somewhat differently.</p>"
        f"<script type='application/json' id='report-meta'>{embedded}</script>"
        f"<script>{_JS}</script></body></html>"
    )
