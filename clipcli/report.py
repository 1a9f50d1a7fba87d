"""A self-contained HTML report of an evaluation: summary, confusion-matrix heatmap, confident mistakes.

Everything is inline (styles, and thumbnails as data: URIs), so the file opens
anywhere with no network requests.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Sequence

from .evaluate import percent

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 8px; border: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; }
td.name, th.name { text-align: left; }
table.heatmap td { width: 2.2em; height: 2.2em; padding: 0; text-align: center; font-size: 0.75em; }
table.heatmap th.col { writing-mode: vertical-rl; transform: rotate(180deg); }
.mistakes { display: flex; flex-wrap: wrap; gap: 12px; }
.mistake { width: 180px; font-size: 0.85em; }
.mistake img { width: 180px; height: 180px; object-fit: cover; border: 2px solid #c33; }
"""



def page_start(title: str, header: dict, style: str = "") -> str:
    """The opening every report page shares: head, style, title and the list of facts."""
    meta = "".join(f"<li><b>{html.escape(str(k))}:</b> {html.escape(str(v))}</li>" for k, v in header.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}{style}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<ul>{meta}</ul>
"""

def _thumbnail(path: str, size: int = 180) -> str:
    """A JPEG data URI, or "" when the image cannot be read; a video's frame (`video#t=seconds`), or a filmstrip
    of a whole video."""
    from .errors import ImageReadError
    from .images import open_image
    from .paths import is_video_name, split_frame

    try:
        if is_video_name(split_frame(path)[0]):
            from .frames import picture

            image = picture(path, size)
        else:
            image = open_image(path, max_megapixels=200, min_size=size)
            image.thumbnail((size * 2, size * 2))
    except ImageReadError:
        return ""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell_colour(fraction: float) -> str:
    shade = int(255 - 200 * fraction)
    return f"rgb({shade},{shade + (255 - shade) // 3},255)"


def heatmap(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """Rows: true class; columns: predicted class; colour: share of the row."""
    head = "".join(f'<th class="col">{html.escape(name)}</th>' for name in class_names)
    rows = []
    for name, row in zip(class_names, confusion):
        total = sum(row) or 1
        cells = "".join(f'<td style="background:{_cell_colour(v / total)}" title="{v}">{v or ""}</td>' for v in row)
        rows.append(f'<tr><th class="name">{html.escape(name)}</th>{cells}</tr>')
    return (f'<table class="heatmap" id="confusion-heatmap"><tr><th class="name">true \\ predicted</th>{head}</tr>'
            + "".join(rows) + "</table>")


def render_report(title: str, header: dict, results: Sequence[dict], class_names: Sequence[str]) -> str:
    """results: one dict per template set with 'templates', metrics fields, 'confusion_matrix', 'mistakes'."""
    summary = "".join(
        f'<tr><td class="name">{html.escape(r["templates"])}</td><td>{percent(r["acc1"])}</td><td>{percent(r["acc5"])}</td>'
        f'<td>{percent(r["mean_per_class_recall"])}</td><td>{r["count"]}</td></tr>' for r in results)
    best = results[0]
    per_class = "".join(
        f'<tr><td class="name">{html.escape(c["label"])}</td><td>{percent(c["precision"])}</td><td>{percent(c["recall"])}</td>'
        f'<td>{c["support"]}</td></tr>' for c in best["per_class"])
    mistakes = "".join(
        f'<div class="mistake"><img src="{_thumbnail(m["path"])}" alt=""><div><b>true:</b> {html.escape(m["true"])}'
        f'<br><b>predicted:</b> {html.escape(m["predicted"])} ({m["confidence"]:.0%})</div>'
        f'<div title="{html.escape(m["path"])}">{html.escape(m["path"].rsplit("/", 1)[-1])}</div></div>'
        for m in best["mistakes"])
    return page_start(title, header) + f"""<h2>Summary</h2>
<table id="summary"><tr><th class="name">templates</th><th>acc1</th><th>acc5</th><th>mean per-class recall</th>
<th>images</th></tr>{summary}</table>
{trust_section(best)}
<h2>Confusion matrix ({html.escape(best["templates"])})</h2>
{heatmap(best["confusion_matrix"], class_names)}
<h2>Per class ({html.escape(best["templates"])})</h2>
<table><tr><th class="name">label</th><th>precision</th><th>recall</th><th>support</th></tr>{per_class}</table>
<h2>Most confident mistakes</h2>
<div class="mistakes">{mistakes or "<p>none</p>"}</div>
</body></html>
"""


def reliability_diagram(rows: Sequence[dict], ece: float, size: int = 320) -> str:
    """Inline SVG: per confidence bin, a bar to the accuracy of its images, the diagonal of perfect calibration,
    and the gap to it shaded (Guo et al. 2017, figure 1)."""
    left, top, bottom = 48, 12, 36
    plot = size - left - 12

    def px(value: float) -> float:
        return left + plot * value

    def py(value: float) -> float:
        return top + plot * (1 - value)

    parts = [f'<svg id="reliability-diagram" width="{size}" '
             f'height="{plot + top + bottom}" font-size="11" font-family="system-ui, sans-serif">']
    for step in range(0, 11, 2):
        value = step / 10
        parts.append(f'<line x1="{left}" x2="{px(1):.1f}" y1="{py(value):.1f}" y2="{py(value):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(value) + 4:.1f}" text-anchor="end">{value:.1f}</text>'
                     f'<text x="{px(value):.1f}" y="{py(0) + 14:.1f}" text-anchor="middle">{value:.1f}</text>')
    for row in rows:
        if not row["count"]:
            continue
        x, width = px(row["lower"]), plot * (row["upper"] - row["lower"])
        accuracy, confidence = row["accuracy"], row["confidence"]
        parts.append(f'<rect class="bin" x="{x:.1f}" y="{py(accuracy):.1f}" width="{width:.1f}" '
                     f'height="{py(0) - py(accuracy):.1f}" fill="#4a78c2" stroke="#fff"><title>confidence '
                     f'{row["lower"]:.2f}-{row["upper"]:.2f}: {row["count"]} images, accuracy {accuracy:.1%}, '
                     f'mean confidence {confidence:.1%}</title></rect>')
        low, high = sorted((accuracy, confidence))
        parts.append(f'<rect class="gap" x="{x:.1f}" y="{py(high):.1f}" width="{width:.1f}" '
                     f'height="{py(low) - py(high):.1f}" fill="#d62728" fill-opacity="0.3"/>')
    parts.append(f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(1):.1f}" y2="{py(1):.1f}" stroke="#555" '
                 f'stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{px(0.5):.1f}" y="{py(0) + 30:.1f}" text-anchor="middle">top-1 confidence</text>')
    parts.append(f'<text x="12" y="{py(0.5):.1f}" text-anchor="middle" transform="rotate(-90 12 {py(0.5):.1f})">'
                 f'accuracy</text>')
    parts.append(f'<text x="{left + 6}" y="{top + 14}">ECE {ece:.3f}</text></svg>')
    return "".join(parts)


def trust_section(result: dict) -> str:
    """Calibration (ECE and the reliability diagram) and, when measured, the open-set metrics of a result."""
    if "calibration" not in result:
        return ""
    calibration = result["calibration"]
    section = (f'<h2>Calibration ({html.escape(result["templates"])})</h2>\n<p>Expected calibration error '
               f'({calibration["bins"]} equal-width bins of the top-1 confidence): <b id="ece">'
               f'{calibration["ece"]:.3f}</b>. Bars: accuracy of the images in each bin; dashed line: perfect '
               f'calibration; red: the gap.</p>\n'
               + reliability_diagram(calibration["reliability"], calibration["ece"]))
    metrics = result.get("open_set")
    if metrics:
        auroc = "–" if metrics["auroc"] is None else f'{metrics["auroc"]:.3f}'
        section += (f'\n<h2>Open set ({html.escape(metrics["label"])}, threshold {metrics["threshold"]:g})</h2>\n'
                    f'<table id="open-set"><tr><th>AUROC</th><th>FPR at 95% TPR</th><th>known images right</th>'
                    f'<th>known images kept</th><th>unknown images to {html.escape(metrics["label"])}</th>'
                    f'<th>known</th><th>unknown</th></tr><tr><td>{auroc}</td><td>{percent(metrics["fpr95"])}</td>'
                    f'<td>{percent(metrics["known_accuracy"])}</td><td>{percent(metrics["known_kept"])}</td>'
                    f'<td>{percent(metrics["unknown_rejected"])}</td><td>{metrics["known"]}</td>'
                    f'<td>{metrics["unknown"]}</td></tr></table>')
    return section


PREVIEW_STYLE = """
.group { margin: 1.5em 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 150px; font-size: 0.8em; overflow-wrap: anywhere; }
.card img { width: 150px; height: 150px; object-fit: cover; border: 1px solid #ccc; }
.card.video { width: auto; max-width: 100%; }
.card.video img { width: auto; max-width: 100%; object-fit: contain; }
.card .missing { width: 150px; height: 150px; border: 1px dashed #c00; color: #c00; display: flex;
                 align-items: center; justify-content: center; }
.unsure .card img { border: 2px solid #d90; }
.score { font-weight: bold; }
"""


def render_sort_preview(title: str, header: dict, operations: Sequence[dict]) -> str:
    """A page of thumbnails grouped by destination folder, the unsure group first, best scores first in each."""
    groups: dict[tuple[bool, str], list[dict]] = {}
    for op in operations:
        if op.get("folder") is not None:
            groups.setdefault((not op["unsure"], op["folder"]), []).append(op)
    sections = []
    for (sure, folder), ops in sorted(groups.items()):
        cards = "".join(
            f'<div class="card{_video_class(op["source"])}"><img src="{_thumbnail(op["source"], 150)}" alt="">'
            f'<div class="score">{html.escape(op["label"])} {op["score"]:.1%}</div>'
            f'<div title="{html.escape(op["source"])}">{html.escape(op["source"].rsplit("/", 1)[-1])}</div>'
            f'<div>{html.escape(op["operation"])}{(": " + html.escape(op["note"])) if op["note"] else ""}</div></div>'
            for op in sorted(ops, key=lambda o: -o["score"]))
        kind = "group" if sure else "group unsure"
        sections.append(f'<section class="{kind}" data-folder="{html.escape(folder)}"><h2>{html.escape(folder)}'
                        f'{" (unsure)" if not sure else ""}: {len(ops)}</h2><div class="cards">{cards}</div></section>')
    failed = [op for op in operations if op.get("operation") == "error"]
    errors = "".join(f"<li>{html.escape(op['source'])}: {html.escape(op['note'])}</li>" for op in failed)
    return page_start(title, header, PREVIEW_STYLE) + f"""{"".join(sections) or "<p>nothing to sort</p>"}
{f"<h2>Not sorted</h2><ul id='errors'>{errors}</ul>" if errors else ""}
</body></html>
"""


def _video_class(path: str) -> str:
    """" video" for a video's card (a filmstrip, as wide as it is), else ""."""
    from .paths import is_video_name, split_frame

    video, at = split_frame(path)
    return " video" if is_video_name(video) and at is None else ""


def _card(path: str, caption: str, extra: str = "") -> str:
    """A thumbnail with a caption and the file's name (its whole path on hover)."""
    thumbnail = _thumbnail(path, 150)
    picture = (f'<img src="{thumbnail}" alt="">' if thumbnail else  # never an <img src="">: a page reload of itself
               '<div class="missing">cannot be read now</div>')
    return (f'<div class="card{_video_class(path)}"{extra}>{picture}<div class="score">{caption}</div>'
            f'<div title="{html.escape(path)}">{html.escape(path.rsplit("/", 1)[-1])}</div></div>')


def render_search(title: str, header: dict, hits: Sequence[dict]) -> str:
    """The hits as thumbnails, best first, with rank and cosine similarity; a video's moment as its best frame,
    with its times."""
    from .paths import clock, frame_key

    def card(hit: dict) -> str:
        caption = f'#{hit["rank"]} &middot; {hit["score"]:.3f}'
        if "best" not in hit:
            return _card(hit["path"], caption, f' data-rank="{hit["rank"]}"')
        caption += f' &middot; {clock(hit["start"])}-{clock(hit["end"])}'
        return _card(frame_key(hit["path"], hit["best"]), caption, f' data-rank="{hit["rank"]}"')

    cards = "".join(card(h) for h in hits)
    return page_start(title, header, PREVIEW_STYLE) + f"""<div class="cards" id="hits">{cards or "<p>no match</p>"}</div>
</body></html>
"""


def render_dupes(title: str, header: dict, groups: Sequence[Sequence]) -> str:
    """Each group of near-duplicates side by side, the best copy first (search.Copy items)."""
    sections = []
    for number, group in enumerate(groups, start=1):
        cards = "".join(_card(c.path, ("best copy" if i == 0 else f"similarity {c.similarity:.3f}")
                              + (f" &middot; {c.width}x{c.height}" if c.width else ""))
                        for i, c in enumerate(group))
        sections.append(f'<section class="group" data-group="{number}"><h2>group {number}: {len(group)} images'
                        f'</h2><div class="cards">{cards}</div></section>')
    return page_start(title, header, PREVIEW_STYLE) + f"""{"".join(sections) or "<p>no near-duplicates</p>"}
</body></html>
"""


CURVE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def render_curve(title: str, header: dict, rows: Sequence[dict], width: int = 640, height: int = 360) -> str:
    """The few-shot figure of the CLIP paper for the user's data: accuracy against shots per class, one line per
    method (the zero-shot point at 0 shots starts every line), error bars of one standard deviation; inline SVG."""
    shots = sorted({row["shots"] for row in rows})
    methods = list(dict.fromkeys(row["method"] for row in rows if row["shots"]))
    by_key = {(row["method"], row["shots"]): row for row in rows}
    zero = by_key.get(("zero-shot", 0))
    left, right, top, bottom = 56, 130, 20, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    high = max(min(1.0, row["mean"] + row["std"]) for row in rows)
    top_value = min(1.0, math.ceil(high * 10 + 1e-9) / 10) or 0.1

    def px(index: int) -> float:
        return left + plot_w * (index / max(1, len(shots) - 1))

    def py(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    parts = [f'<svg id="few-shot-curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-size="12" font-family="system-ui, sans-serif">']
    for step in range(int(round(top_value * 10)) + 1):
        value = step / 10
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
                     f'stroke="#eee"/><text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end">{value:.0%}</text>')
    for i, k in enumerate(shots):
        parts.append(f'<text x="{px(i):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{k}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">shots per class</text>')
    for n, method in enumerate(methods):
        colour = CURVE_COLOURS[n % len(CURVE_COLOURS)]
        points = []
        for i, k in enumerate(shots):
            row = zero if k == 0 else by_key.get((method, k))
            if row is None:
                continue
            x, y = px(i), py(row["mean"])
            points.append(f"{x:.1f},{y:.1f}")
            if row["std"]:
                parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{py(max(0.0, row["mean"] - row["std"])):.1f}" '
                             f'y2="{py(min(1.0, row["mean"] + row["std"])):.1f}" stroke="{colour}"/>')
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{html.escape(method)}, '
                         f'{k} shots: {row["mean"]:.1%}</title></circle>')
        parts.append(f'<polyline class="method" data-method="{html.escape(method)}" points="{" ".join(points)}" '
                     f'fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{left + plot_w + 10}" y="{top + 16 * n + 12}" fill="{colour}">{html.escape(method)}'
                     f'</text>')
    parts.append("</svg>")
    head = "".join(f'<th>{k}</th>' for k in shots)
    body = ""
    for method in methods:
        cells = ""
        for k in shots:
            row = zero if k == 0 else by_key.get((method, k))
            cells += f"<td>{'' if row is None else percent(row['mean'])}</td>"
        body += f'<tr><td class="name">{html.escape(method)}</td>{cells}</tr>'
    return page_start(title, header) + f"""{"".join(parts)}
<table id="curve-table"><tr><th class="name">method</th>{head}</tr>{body}</table>
</body></html>
"""
