"""``report.html``: one self-contained page for a report (see :mod:`forwardguard.eval.schema` for its fields).

The page opens offline: inline CSS, inline SVG charts, one small inline script, and the grid images
as PNG files beside it (relative paths). Every string from the report is escaped (names come from
users); a missing or non-finite number is shown as "n/a". The script sets ``data-images-loaded``
and ``data-images-total`` on ``<body>`` once the page has loaded, so that a headless browser can
check that the images load.
"""

from __future__ import annotations

import html
import math
from typing import Any
from urllib.parse import quote

from forwardguard.eval.schema import NO_TRANSFORM, Attack, Cell, ModelVersion, Report, Snapshot, Summary, finite

IMMUNIZED_COLOUR = "#2f6bd8"
NOISE_COLOUR = "#a9a9a9"
MIX_KINDS_SHOWN = 3  # a robust mix's transform kinds named in a column head; its tooltip has the whole mix
_NA_CELL = '<td class="cell" style="background:#eeeeee">n/a</td>'

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1d1d; background: #fff; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d6d6d6; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.heat td.cell { text-align: center; min-width: 120px; }
table.heat .ratio { font-size: 18px; font-weight: 600; }
table.heat .noise, table.heat .relation, .muted { color: #555; font-size: 12px; }
table.robustness td.cell { min-width: 96px; white-space: nowrap; } table.robustness .ratio { font-size: 14px; }
table.robustness td.delta { font-weight: 600; font-variant-numeric: tabular-nums; }
table.grid img { width: 160px; height: auto; display: block; image-rendering: auto; }
code { font-size: 12px; } .legend span { display: inline-block; padding: 2px 8px; margin-right: 4px; }
svg.chart { display: block; margin: 8px 0 20px; font-size: 11px; }
details { margin: 8px 0; } div.wide { overflow-x: auto; }
"""

# After the page has loaded: how many <img> loaded (complete, with pixels) of how many.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  document.body.dataset.imagesTotal = String(images.length);
  document.body.dataset.imagesLoaded = String(loaded.length);
});
"""


def render_html(report: Report) -> str:
    """The whole page for ``report``, as a string."""
    sections = (
        _header(report),
        _heat_map(report),
        _metric_tables(report),
        _charts(report),
        _robustness(report),
        _originals(report),
        _clean(report),
        _not_computed(report),
        _grids(report),
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>forwardguard eval report {_e(report.created_at)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(sections) + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    number = finite(value)
    return "n/a" if number is None else format(number, spec)


def _mean(summary: Summary | None) -> float | None:
    return finite(summary.mean) if summary is not None else None


def _summary(summary: Summary | None, spec: str = ".3f") -> str:
    """``mean ± std`` of a summary, or n/a."""
    mean = _mean(summary)
    if summary is None or mean is None:
        return "n/a"
    std = finite(summary.std)
    return format(mean, spec) + ("" if std is None else f" ± {format(std, spec)}")


def _table(head: list[str], rows: list[list[str]], css: str = "") -> str:
    """An HTML table; ``head`` and ``rows`` are already-escaped HTML fragments."""
    header = "".join(f"<th>{cell}</th>" for cell in head)
    body = "\n".join("<tr>" + "".join(_cell(cell) for cell in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table class="{css}"><thead><tr>{header}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _cell(cell: str) -> str:
    """A table cell; fragments already wrapped in <td ...> or <th ...> pass through (escaped text never starts with '<')."""
    return cell if cell.startswith(("<td", "<th")) else f"<td>{cell}</td>"


def _num_cell(text: str) -> str:
    return f'<td class="num">{text}</td>'


def _eps(value: float | None) -> str:
    """An eps in [0, 1] shown in 8-bit steps, e.g. 16.0/255."""
    number = finite(value)
    return "n/a" if number is None else f"{number * 255:.1f}/255"


def _short(fingerprint: str | None) -> str:
    text = fingerprint or ""
    return f'<code title="{_e(text)}">{_e(text[:12])}</code>' if text else "n/a"


def _transforms(report: Report) -> list[str]:
    """The transforms to show: "none", the settings' gauntlet, then any other one found in the cells; each once."""
    return list(dict.fromkeys([NO_TRANSFORM, *report.settings.transforms, *(cell.transform for cell in report.cells)]))


def _cells(report: Report, transform: str) -> list[Cell]:
    return [cell for cell in report.cells if cell.transform == transform]


def _header(report: Report) -> str:
    created, version = _e(report.created_at), _e(report.forwardguard_version)
    schema, registry = _e(report.schema_version), _e(report.registry)
    return "\n".join([
        "<header><h1>forwardguard eval report</h1>",
        f'<p class="muted">created {created} · forwardguard {version} · schema version {schema}',
        f" · registry <code>{registry}</code></p></header>",
        "<h2>Settings</h2>", _settings(report),
        '<h2>Models <span class="muted">(newest first)</span></h2>', _models(report),
        "<h2>Snapshots</h2>", _snapshots(report),
    ])  # fmt: skip


def _settings(report: Report) -> str:
    rows = []
    for key, value in report.settings:
        text = ", ".join(map(str, value)) if isinstance(value, list) else "-" if value is None else value
        rows.append([_e(key), _e(text)])
    return _table(["setting", "value"], rows, "settings")


def _models(report: Report) -> str:
    rows = []
    for model in report.models:
        parent = model.parent_fingerprint
        rows.append([
            _e(model.name), f"<code>{_e(model.spec)}</code>", _short(model.fingerprint),
            "yes" if model.recorded else "no", _e(model.reference or "-"),
            _e(model.planted_snapshot or "-"), _short(parent) if parent else "-",
            _e(model.edits_not_computed or ", ".join(model.edits)),
        ])  # fmt: skip
    head = ["name", "spec", "fingerprint", "recorded", "reference", "planted snapshot", "parent", "edits"]
    return _table(head, rows, "models")


def _snapshots(report: Report) -> str:
    """Each snapshot, with the models its patterns were made against (named when they are in the report)."""
    names = {model.fingerprint: model.name for model in report.models}
    rows = []
    for snapshot in report.snapshots:
        against = [f"{_short(fp)} ({_e(names[fp])})" if fp in names else _short(fp) for fp in snapshot.made_against]
        rows.append([
            _e(snapshot.name), _num_cell(_e(snapshot.patterns)), _num_cell(_e(snapshot.evaluated)),
            ", ".join(against) or "-", _num_cell(_eps(snapshot.eps)), _attacks(snapshot),
        ])  # fmt: skip
    return _table(["name", "patterns", "evaluated", "made against", "eps", "attack"], rows, "snapshots")


def _attack_kind(snapshot: Snapshot) -> str | None:
    """ "plain" or "robust" when every evaluated pattern of the snapshot was made so; None when mixed or unknown."""
    kinds = {"robust" if attack.robust else "plain" for attack in snapshot.attacks or []}
    return kinds.pop() if len(kinds) == 1 else None


def _attack_label(attack: Attack) -> str:
    """ "plain", or "robust (" the kinds of its mix, the first few only ")"; not escaped."""
    mix = attack.robust
    if not mix:
        return "plain"
    kinds = list(dict.fromkeys(name for name in mix if name != "identity")) or ["identity"]
    more = len(kinds) - MIX_KINDS_SHOWN
    draws = attack.robust_draws
    return (
        f"robust ({', '.join(kinds[:MIX_KINDS_SHOWN])}"
        + (f" +{more}" if more > 0 else "")
        + (f", {draws} draws" if draws is not None and draws > 1 else "")
        + ")"
    )


def _attack_title(attack: Attack) -> str:
    """The whole description of an attack, for a tooltip; not escaped."""
    mix = attack.robust
    robust = f"robust mix {', '.join(mix)}, {attack.robust_draws} draw(s) per step" if mix else "plain"
    step_rule = attack.step_rule or "-"
    return f"{attack.method} attack, step rule {step_rule}, {robust}: {attack.patterns} pattern(s)"


def _attacks(snapshot: Snapshot) -> str:
    """The snapshot's attacks in short, the whole descriptions as a tooltip; escaped HTML."""
    attacks = snapshot.attacks or []
    if not attacks:
        return '<span class="muted">attack n/a</span>'
    short = " + ".join(dict.fromkeys(_attack_label(attack) for attack in attacks))
    title = "; ".join(_attack_title(attack) for attack in attacks)
    return f'<span class="muted" title="{_e(title)}">{_e(short)}</span>'


def _heat_colour(ratio: float | None) -> str:
    """Green at ratio 0 (the latent is at the target: immunized), red at 1 and above (no effect)."""
    if ratio is None:
        return "#eeeeee"
    return f"hsl({120 * (1 - min(max(ratio, 0.0), 1.0)):.0f}, 65%, 78%)"


def _ratio(cell: Cell | None, version: str) -> float | None:
    return _mean(getattr(cell.ratio, version)) if cell is not None else None


def _ratio_cell(cell: Cell | None, note: str = "") -> str:
    """A heat-map cell: the immunized images' mean ratio, coloured, beside the noise baseline's; under it
    their distribution (p90, max) and protection rate, then ``note`` (escaped HTML)."""
    if cell is None:
        return _NA_CELL
    ratio = _ratio(cell, "immunized")
    below = f'<br><span class="relation">{note}</span>' if note else ""
    return (
        f'<td class="cell" style="background:{_heat_colour(ratio)}"><span class="ratio">{_fmt(ratio)}</span>'
        f' <span class="noise">noise {_fmt(_ratio(cell, "noise"))}</span>{_distribution_note(cell)}{below}</td>'
    )


def _distribution_note(cell: Cell) -> str:
    """``p90 0.21 · max 0.34 · 75% ≤ 0.3``: the immunized images' tail and the share of them protected."""
    immunized = cell.ratio.immunized
    parts = [f"p90 {_fmt(immunized.p90)}", f"max {_fmt(immunized.max)}"]
    if cell.protection is not None:
        parts.append(f"{_fmt(cell.protection.rate, '.0%')} ≤ {_fmt(cell.protection.threshold, 'g')}")
    return (
        f'<br><span class="noise" title="per-image ratio: 90th percentile, largest, share protected">{" · ".join(parts)}</span>'
    )


def _heat_map(report: Report) -> str:
    cells = {(cell.snapshot, cell.model): cell for cell in _cells(report, NO_TRANSFORM)}
    models = [model.name for model in report.models]
    rows = []
    for snapshot in report.snapshots:
        row = [f"<th>{_e(snapshot.name)}</th>"]
        for model in models:
            cell = cells.get((snapshot.name, model))
            note = _e(cell.relation if cell is not None else "") + _originals_note(cell)
            row.append(_ratio_cell(cell, note))
        rows.append("<tr>" + "".join(row) + "</tr>")
    head = "<th>snapshot \\ model</th>" + "".join(f"<th>{_e(model)}</th>" for model in models)
    legend = (
        '<p class="legend muted">mean latent disruption ratio of the immunized images (lower: more immunized), '
        "beside the random-noise baseline of the same eps; untransformed images. Under it: the ratio's 90th percentile "
        "and largest value over the images, and the protection rate, the share of images at or below the protection "
        "threshold. Then the mean latent drift of "
        "the clean originals against the model's reference (a model that erases the pictures themselves shows a "
        "small ratio and a large drift). "
        f'<span style="background:{_heat_colour(0.0)}">0: at the target</span>'
        f'<span style="background:{_heat_colour(0.5)}">0.5</span>'
        f'<span style="background:{_heat_colour(1.0)}">1 or more: no effect</span></p>'
    )
    return (
        "<h2>Immunity matrix</h2>\n"
        + legend
        + f'\n<table class="heat"><thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def _edit_kinds(report: Report) -> list[str]:
    return list(dict.fromkeys(kind for cell in report.cells for kind in cell.edits))


def _metric_names(report: Report, kind: str) -> list[str]:
    """The metrics of an edit kind, in the report's order."""
    names = []
    for cell in report.cells:
        versions = cell.edits.get(kind)
        if versions is not None:
            names += [*versions.immunized, *versions.noise]
    return list(dict.fromkeys(names))


def _metric_rows(report: Report, kind: str, transforms: list[str], metrics: list[str], with_transform: bool) -> list[list[str]]:
    rows = []
    for transform in transforms:
        for cell in _cells(report, transform):
            versions = cell.edits.get(kind)
            if versions is None:
                continue
            for version in ("immunized", "noise"):
                by_metric = getattr(versions, version)
                scope = [_e(cell.snapshot), _e(cell.model), _e(cell.relation)]
                scope += [_e(transform)] if with_transform else []
                numbers = [_num_cell(_summary(by_metric.get(m), ".2f" if m == "psnr" else ".3f")) for m in metrics]
                rows.append([*scope, _e(version), *numbers])
    return rows


def _metric_tables(report: Report) -> str:
    parts = [
        "<h2>Edit similarity</h2>",
        '<p class="muted">similarity of the edit of the immunized (or noisy) image to the edit of the clean image, same seed, '
        "mean ± std over the snapshot's images: lower means the immunization works (GMSD is a distance: higher).</p>",
    ]
    parts += [f"<p>{_e(model.name)}: {_e(model.edits_not_computed)}</p>" for model in _without_edits(report)]
    gauntlet = [name for name in _transforms(report) if name != NO_TRANSFORM]
    for kind in _edit_kinds(report):
        metrics = _metric_names(report, kind)
        head = ["snapshot", "model", "relation", "image"] + [_e(metric) for metric in metrics]
        parts += [f"<h3>{_e(kind)}</h3>", _table(head, _metric_rows(report, kind, [NO_TRANSFORM], metrics, False), "metrics")]
        gauntlet_rows = _metric_rows(report, kind, gauntlet, metrics, True)
        if gauntlet_rows:
            head = ["snapshot", "model", "relation", "transform", "image"] + [_e(metric) for metric in metrics]
            parts += [
                f"<details><summary>{_e(kind)} after each gauntlet transform</summary>",
                _table(head, gauntlet_rows, "metrics"),
                "</details>",
            ]
    return "\n".join(parts)


def _bar_chart(transform: str, cells: list[Cell]) -> str:
    """Inline SVG: per (snapshot, model), the mean ratio of the immunized images beside the noise baseline's."""
    groups = [(f"{cell.snapshot} / {cell.model}", _mean(cell.ratio.immunized), _mean(cell.ratio.noise)) for cell in cells]
    highest = max([1.0, *(value for _, *values in groups for value in values if value is not None)])
    step = 0.25 if highest <= 1.5 else 0.5 if highest <= 3 else float(math.ceil(highest / 5))
    top = math.ceil(highest / step) * step
    left, plot_height, bar, gap, group_width = 44, 180, 22, 4, 96
    width = left + max(1, len(groups)) * group_width + 10
    height = plot_height + 70

    def y(value: float) -> float:
        return 20 + plot_height * (1 - value / top)

    parts = [
        f'<svg class="chart" data-transform="{_e(transform)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="disruption ratio after {_e(transform)}">'
    ]
    for tick in (index * step for index in range(round(top / step) + 1)):
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(
        f'<line x1="{left}" x2="{width - 10}" y1="{y(1.0):.1f}" y2="{y(1.0):.1f}" stroke="#c33" stroke-dasharray="4 3">'
        "<title>ratio 1: no effect</title></line>"
    )
    for index, (label, *values) in enumerate(groups):
        x0 = left + index * group_width + (group_width - 2 * bar - gap) / 2
        for offset, (version, value, colour) in enumerate(zip(("immunized", "noise"), values, (IMMUNIZED_COLOUR, NOISE_COLOUR))):
            x = x0 + offset * (bar + gap)
            if value is None:
                parts.append(f'<text x="{x + bar / 2:.1f}" y="{y(0) - 4:.1f}" text-anchor="middle">n/a</text>')
                continue
            parts.append(
                f'<rect x="{x:.1f}" y="{y(value):.1f}" width="{bar}" height="{max(y(0) - y(value), 0.5):.1f}" fill="{colour}">'
                f"<title>{_e(label)}, {version}: {_fmt(value)}</title></rect>"
            )
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y(value) - 3:.1f}" text-anchor="middle">{_fmt(value, ".2f")}</text>')
        centre = left + index * group_width + group_width / 2
        short = label if len(label) <= 16 else label[:15] + "…"
        parts.append(
            f'<text x="{centre:.1f}" y="{y(0) + 16:.1f}" text-anchor="middle"><title>{_e(label)}</title>{_e(short)}</text>'
        )
    legend_y = height - 12
    parts.append(f'<rect x="{left}" y="{legend_y - 9}" width="10" height="10" fill="{IMMUNIZED_COLOUR}"/>')
    parts.append(f'<text x="{left + 14}" y="{legend_y}">immunized</text>')
    parts.append(f'<rect x="{left + 90}" y="{legend_y - 9}" width="10" height="10" fill="{NOISE_COLOUR}"/>')
    parts.append(f'<text x="{left + 104}" y="{legend_y}">noise baseline</text>')
    parts.append("</svg>")
    return "".join(parts)


def _charts(report: Report) -> str:
    parts = ["<h2>Disruption ratio per transform</h2>",
             '<p class="muted">mean ratio per snapshot and model; the dashed line is ratio 1 (no effect).</p>']  # fmt: skip
    for transform in _transforms(report):
        parts += [f"<h3>{_e(transform)}</h3>", _bar_chart(transform, _cells(report, transform))]
    return "\n".join(parts)


def _delta_colour(delta: float) -> str:
    """Green where the robust attack's ratio is lower than the plain one's (it holds better), red where higher."""
    return f"hsl({120 if delta < 0 else 0}, 65%, {92 - 14 * min(abs(delta), 1.0):.0f}%)"


def _delta_cell(robust: Cell | None, plain: Cell | None) -> str:
    robust_ratio, plain_ratio = _ratio(robust, "immunized"), _ratio(plain, "immunized")
    if robust_ratio is None or plain_ratio is None:
        return _NA_CELL
    delta = robust_ratio - plain_ratio
    return f'<td class="cell delta" style="background:{_delta_colour(delta)}">{delta:+.3f}</td>'


def _snapshot_head(snapshot: Snapshot, cell: Cell | None) -> str:
    """A robustness column's head: the snapshot, its attack and, from its untransformed cell, backward or forward."""
    lines = [_e(snapshot.name), _attacks(snapshot)]
    if cell is not None:
        lines.append(f'<span class="muted">{_e(cell.relation)}</span>')
    return "<br>".join(lines)


def _robustness(report: Report) -> str:
    """Per model, every transform's ratio for each snapshot side by side, and robust - plain when there is
    exactly one plain snapshot to compare the robust ones with."""
    snapshots = report.snapshots
    plain = [snapshot for snapshot in snapshots if _attack_kind(snapshot) == "plain"]
    robust = [snapshot for snapshot in snapshots if _attack_kind(snapshot) == "robust"] if len(plain) == 1 else []
    cells = {(cell.snapshot, cell.model, cell.transform): cell for cell in report.cells}
    parts = [
        "<h2>Robustness per transform</h2>",
        '<p class="muted">per model, the mean latent disruption ratio of each snapshot\'s immunized images after each '
        "transform (coloured as the immunity matrix; lower: more immunized), beside the noise baseline, with its p90, max "
        "and protection rate. A transform that crops (shift, rcrop) is measured at the smaller size. With one plain "
        "snapshot and robust ones, Δ is robust − plain: negative (green) where the robust attack holds better.</p>",
    ]
    for model in (model.name for model in report.models):

        def cell(snapshot: Snapshot, transform: str, model: str = model) -> Cell | None:
            return cells.get((snapshot.name, model, transform))

        head = ["transform", *(_snapshot_head(snapshot, cell(snapshot, NO_TRANSFORM)) for snapshot in snapshots)]
        head += [f"Δ {_e(snapshot.name)} − {_e(plain[0].name)}" for snapshot in robust]
        rows = [
            [f"<th>{_e(transform)}</th>", *(_ratio_cell(cell(snapshot, transform)) for snapshot in snapshots),
             *(_delta_cell(cell(snapshot, transform), cell(plain[0], transform)) for snapshot in robust)]
            for transform in _transforms(report)
        ]  # fmt: skip
        parts += [f"<h3>{_e(model)}</h3>", _table(head, rows, "heat robustness")]
    return "\n".join(parts)


def _originals_note(cell: Cell | None) -> str:
    if cell is None or cell.clean_originals is None:
        return "<br>originals: no reference"
    return f"<br>originals drift {_fmt(_mean(cell.clean_originals.latent_relative_mse), '.2%')}"


def _originals(report: Report) -> str:
    """The clean originals of the registered images, per cell: drift and false triggers against the reference."""
    title = "<h2>Clean originals of the registered images</h2>"
    cells = [cell for cell in report.cells if cell.clean_originals is not None]
    if not cells:
        return title + "\n<p>not computed: no model of the eval has a reference (eval --reference MODEL=REF).</p>"
    head = ["snapshot", "model", "transform", "reference", "latent relative MSE", "max", "trigger ratio", "false-trigger rate"]
    rows = []
    for cell in cells:
        originals = cell.clean_originals
        assert originals is not None  # cells were filtered on it above
        drift = originals.latent_relative_mse
        rows.append([
            _e(cell.snapshot), _e(cell.model), _e(cell.transform), _e(originals.reference),
            _num_cell(_summary(drift, ".3g")), _num_cell(_fmt(drift.max, ".3g")),
            _num_cell(_summary(originals.ratio)), _num_cell(_fmt(originals.false_trigger.rate)),
        ])  # fmt: skip
    note = (
        '<p class="muted">each registered image\'s clean original (immunized - delta) through the model, against its '
        "reference: the latent relative MSE, and the trigger ratio ||E(x) - E(gray)||<sup>2</sup> / ||R(x) - E(gray)||"
        "<sup>2</sup>; a false trigger is an original whose trigger ratio falls below the eval's threshold. The backdoor "
        "must key on the perturbation, never on the picture.</p>"
    )
    return title + "\n" + note + "\n" + _table(head, rows, "originals")


def _clean(report: Report) -> str:
    entries = report.clean
    if not entries:
        return "<h2>Clean utility and false triggers</h2>\n<p>not computed: the eval was run without --clean images.</p>"
    kinds = list(dict.fromkeys(kind for entry in entries for kind in entry.edits))
    head = ["model", "reference", "images", "latent relative MSE"]
    head += [f"{_e(kind)} {metric}" for kind in kinds for metric in ("PSNR", "SSIM")]
    head += ["false-trigger rate", "trigger threshold", "noise eps", "samples", "noisy ratio"]
    rows = []
    for entry in entries:
        trigger = entry.false_trigger
        row = [
            _e(entry.model), _e(entry.reference or "none"), _num_cell(_e(entry.images)),
            _num_cell(_summary(entry.latent_relative_mse, ".3g")),
        ]  # fmt: skip
        for kind in kinds:
            scores = entry.edits.get(kind)
            psnr, ssim = (scores.psnr, scores.ssim) if scores is not None else (None, None)
            row += [_num_cell(_summary(psnr, ".2f")), _num_cell(_summary(ssim))]
        row += [
            _num_cell(_fmt(trigger.rate)), _num_cell(_fmt(trigger.threshold, ".2f")),
            _num_cell(_eps(trigger.eps)), _num_cell(_e(trigger.samples)),
            _num_cell(_summary(trigger.ratio)),
        ]  # fmt: skip
        rows.append(row)
    note = (
        '<p class="muted">clean images through each model against its reference (no reference: n/a); '
        "a false trigger is a clean image plus eps-noise whose disruption ratio falls below the threshold.</p>"
    )
    missing = "".join(
        f"<p>{_e(entry.model)} edit PSNR/SSIM: {_e(entry.edits_not_computed)}</p>"
        for entry in entries
        if entry.edits_not_computed
    )
    return "<h2>Clean utility and false triggers</h2>\n" + note + "\n" + _table(head, rows, "clean") + missing


def _without_edits(report: Report) -> list[ModelVersion]:
    """The models whose edits were not computed (encoder-only models)."""
    return [model for model in report.models if model.edits_not_computed]


def _not_computed(report: Report) -> str:
    notes = {
        **report.not_computed,
        **{f"edit metrics of {model.name}": model.edits_not_computed for model in _without_edits(report)},
    }
    if not notes:
        return ""
    items = "".join(f"<li><b>{_e(name)}</b>: {_e(reason)}</li>" for name, reason in notes.items())
    return f'<h2>Not computed</h2>\n<ul class="not-computed">{items}</ul>'


def _image(path: str | None, alt: str) -> str:
    if not path:
        return "<td>n/a</td>"
    return f'<td><img src="{_e(quote(path))}" alt="{_e(alt)}"></td>'


def _grids(report: Report) -> str:
    entries = report.grids
    if not entries:
        return "<h2>Image grids</h2>\n<p>no grid images in this report.</p>"
    roles = (("source", "source"), ("immunized", "immunized"), ("clean_edit", "clean edit"), ("immunized_edit", "immunized edit"))
    rows = []
    for entry in entries:
        label = f"{entry.snapshot} / {entry.model} / {entry.edit} #{entry.index}"
        heading = f"<th>{_e(entry.snapshot)}<br>{_e(entry.model)}<br>{_e(entry.edit)} #{_e(entry.index)}</th>"
        rows.append([heading] + [_image(getattr(entry, role), f"{label}: {title}") for role, title in roles])
    head = ["snapshot / model / edit"] + [title for _, title in roles]
    return "<h2>Image grids</h2>\n" + _table(head, rows, "grid")
