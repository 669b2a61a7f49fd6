"""ARC Prize scoring of a submission and the per-task report a competitor reads to decide what to change.

`score_submission` is the scoring rule (pass@2: a test input counts if either attempt equals its solution;
a task scores the mean over its inputs, a run the mean over tasks). `write_report` writes

  index.html     summary (score, solved / partly / unsolved), the training curves when given, what changed
                 against another submission when given, and a sortable per-task table with small pictures
                 of both attempts beside the truth for every test input
  tasks/*.html   one page per task: demonstrations, test inputs, truth and attempts (file names sanitised)
  tasks.parquet, tasks.csv   the table's numbers

Per-input figures come from the predictor's `<submission>.details.json`: votes of the winning grid, valid
views, mean halting steps, and `chunk_s_per_input` (the wall time of the prediction chunk that held the
input, divided evenly among its inputs: views of many tasks share model batches, so this is not a per-task
measurement). No torch here, and polars only for the report's table, so scoring runs without it.
"""
from __future__ import annotations

import base64
import html
import shutil
import struct
import zlib
from pathlib import Path

from pipeline.data.tasks import safe_name

try:
    import polars as pl
except ImportError:  # a machine without it (a lent GPU): scoring works, write_report does not
    pl = None

MAX_DEMOS_SHOWN = 10
ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF",
               "#870C25"]
ATTEMPTS = ("attempt_1", "attempt_2")


# -- scoring ---------------------------------------------------------------------------------------------
def _entries(submission, task_id: str) -> list:
    e = submission.get(task_id) if isinstance(submission, dict) else None
    return e if isinstance(e, list) else []


def _entry(entries: list, k: int) -> dict:
    return entries[k] if k < len(entries) and isinstance(entries[k], dict) else {}


def score_submission(solutions: dict, submission: dict) -> list[dict]:
    """One row per task of `solutions`: tests, correct inputs, task score and which attempt hit."""
    rows = []
    for task_id, truths in solutions.items():
        entries = _entries(submission, task_id)
        hits = [next((a for a in ATTEMPTS if _entry(entries, k).get(a) == truth), None) for k, truth in enumerate(truths)]
        correct = sum(h is not None for h in hits)
        rows.append({"task": task_id, "tests": len(truths), "correct": correct,
                     "score": correct / len(truths) if truths else 0.0, "hit": ",".join(h or "-" for h in hits)})
    return rows


def summary(rows: list[dict]) -> dict:
    """Overall score and counts of a scored submission (the JSON line of stages.score)."""
    n = len(rows)
    return {"score": sum(r["score"] for r in rows) / n if n else 0.0, "tasks": n,
            "solved_tasks": sum(r["score"] == 1.0 for r in rows),
            "partly_solved_tasks": sum(0.0 < r["score"] < 1.0 for r in rows),
            "unsolved_tasks": sum(r["score"] == 0.0 for r in rows),
            "test_inputs": sum(r["tests"] for r in rows), "correct_inputs": sum(r["correct"] for r in rows)}


def compare(rows: list[dict], other_rows: list[dict]) -> dict:
    """Tasks whose score differs between this submission and another scored on the same solutions."""
    other = {r["task"]: r["score"] for r in other_rows}
    gained, lost = [], []
    for r in rows:
        before = other.get(r["task"], 0.0)
        if r["score"] > before:
            gained.append((r["task"], before, r["score"]))
        elif r["score"] < before:
            lost.append((r["task"], before, r["score"]))
    return {"other_score": sum(other.values()) / len(other) if other else 0.0, "gained": gained, "lost": lost,
            "delta": {t: new - old for t, old, new in gained + lost}}


# -- per-input details -------------------------------------------------------------------------------------
def add_details(rows: list[dict], solutions: dict, details: dict) -> None:
    """Per-task means of the predictor's per-input figures (None where it recorded nothing)."""
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    for r in rows:
        d = [details.get(f"{r['task']}/{k}") or {} for k in range(r["tests"])]
        r["winner_votes"] = mean([x["votes"][0] if x.get("votes") else None for x in d])
        r["views"] = mean([x.get("views") for x in d])
        r["valid_views"] = mean([x.get("valid_views") for x in d])
        r["vote_share"] = mean([x["votes"][0] / x["views"] if x.get("votes") and x.get("views") else None for x in d])
        r["halting_steps"] = mean([x.get("mean_steps") for x in d])
        r["chunk_s_per_input"] = mean([x.get("seconds") for x in d])
        sizes = [_shape(t) for t in solutions[r["task"]]]
        names = [f"{h}x{w}" for h, w in sizes]
        r["grid"] = " ".join(n if names.count(n) == 1 else f"{n} (x{names.count(n)})" for n in dict.fromkeys(names))
        r["cells"] = max((h * w for h, w in sizes), default=0)


def _shape(grid) -> tuple[int, int]:
    if isinstance(grid, list) and grid and isinstance(grid[0], list):
        return len(grid), len(grid[0])
    return 0, 0


# -- pictures --------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grid_png(grid) -> bytes | None:
    """A grid as a palette PNG, one pixel per cell (None if it is not a rectangular grid of colours 0..9)."""
    h, w = _shape(grid)
    if not h or not w or any(not isinstance(row, list) or len(row) != w for row in grid):
        return None
    if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 9 for row in grid for v in row):
        return None
    palette = b"".join(bytes.fromhex(c[1:]) for c in ARC_COLOURS)
    raw = b"".join(b"\x00" + bytes(row) for row in grid)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + _png_chunk(b"PLTE", palette) + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + _png_chunk(b"IEND", b""))


def thumb(grid, title: str, cell: int = 4, mark: str = "") -> str:
    """An inline <img> of a grid (cell px per cell, crisp), or a dash when there is nothing to draw."""
    png = grid_png(grid)
    if png is None:
        return f"<span class=none title='{html.escape(title)}'>–</span>"
    h, w = _shape(grid)
    src = "data:image/png;base64," + base64.b64encode(png).decode()
    return (f"<img class='t {mark}' src='{src}' width={w * cell} height={h * cell} "
            f"title='{html.escape(title)} {h}x{w}' alt='{html.escape(title)}'>")


def _grid_table(grid, title: str) -> str:
    if not isinstance(grid, list) or not grid:
        return f"<div class=g><b>{html.escape(title)}</b><br>(none)</div>"
    cells = "".join("<tr>" + "".join(f"<td style='background:{ARC_COLOURS[v] if isinstance(v, int) and 0 <= v <= 9 else '#fff'}'></td>"
                                     for v in (row if isinstance(row, list) else [])) + "</tr>" for row in grid)
    h, w = _shape(grid)
    return f"<div class=g><b>{html.escape(title)}</b> {h}x{w}<table>{cells}</table></div>"


# -- pages -----------------------------------------------------------------------------------------------
STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
h1{margin:0 0 8px} .cards{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0}
.card{border:1px solid #ccc;border-radius:6px;padding:8px 14px;min-width:90px}
.card b{display:block;font-size:22px} .top{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
table.tasks{border-collapse:collapse;font-size:13px} table.tasks th,table.tasks td{border-bottom:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:middle}
table.tasks th{cursor:pointer;background:#f3f3f3;position:sticky;top:0} table.tasks td.l{text-align:left}
tr.solved{background:#eefbe9} tr.partly{background:#fff8e1}
img.t{image-rendering:pixelated;border:2px solid #bbb;margin:1px;vertical-align:middle}
img.ok{border-color:#2a2} img.bad{border-color:#d33} img.truth{border:2px dashed #555}
.pair{display:inline-block;margin-right:10px;white-space:nowrap} .sep{display:inline-block;width:1px;height:14px;background:#999;margin:0 3px;vertical-align:middle}
table.tasks th:first-child{text-align:left}
.none{color:#999} .gain{color:#080} .loss{color:#c00} .note{color:#666;font-size:12px}
.row{display:flex;gap:16px;margin:8px 0} .g table{border-collapse:collapse} .g td{width:12px;height:12px;border:1px solid #333;padding:0}
</style>"""

SORT_JS = """<script>
document.querySelectorAll('table.tasks th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
  const key = r => { const c = r.cells[i], v = c.dataset.v ?? c.textContent; const n = parseFloat(v); return isNaN(n) ? v : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
</script>"""


def _input_note(d: dict) -> str:
    """What the predictor recorded for one test input (votes of the top grids, valid views, halting steps)."""
    if not d:
        return "<p class=note>no prediction details (fallback or not predicted)</p>"
    votes = ", ".join(str(v) for v in d.get("votes", [])) or "none"
    return (f"<p class=note>votes of the ranked grids: {votes} of {d.get('views', '?')} views; valid views "
            f"{d.get('valid_views', '?')}; mean halting steps {d.get('mean_steps', 0):.2f}</p>")


def task_page(task_id: str, challenge: dict, truths: list, entries: list, row: dict, details: dict | None = None) -> str:
    parts = [f"<p><a href='../index.html'>&larr; summary</a></p>"
             f"<h2>{html.escape(task_id)}: {row['correct']}/{row['tests']} correct</h2><h3>Demonstrations</h3>"]
    demos = challenge.get("train", []) if isinstance(challenge, dict) else []
    demos = demos if isinstance(demos, list) else []
    if len(demos) > MAX_DEMOS_SHOWN:
        parts.append(f"<p>first {MAX_DEMOS_SHOWN} of {len(demos)} shown</p>")
    for k, pair in enumerate(demos[:MAX_DEMOS_SHOWN]):
        pair = pair if isinstance(pair, dict) else {}
        parts.append("<div class=row>" + _grid_table(pair.get("input"), f"in {k}") + _grid_table(pair.get("output"), f"out {k}") + "</div>")
    parts.append("<h3>Test</h3>")
    tests = challenge.get("test", []) if isinstance(challenge, dict) else []
    for k, truth in enumerate(truths):
        e = _entry(entries, k)
        test_in = tests[k].get("input") if k < len(tests) and isinstance(tests[k], dict) else None
        parts.append("<div class=row>" + _grid_table(test_in, f"test {k} input") + _grid_table(truth, "truth")
                     + "".join(_grid_table(e.get(a), a.replace("_", " ") + (" ✓" if e.get(a) == truth else ""))
                               for a in ATTEMPTS) + "</div>" + _input_note((details or {}).get(f"{task_id}/{k}") or {}))
    return (f"<html><head><meta charset=utf-8><title>{html.escape(task_id)}</title>{STYLE}</head>"
            f"<body>{''.join(parts)}</body></html>")


def _fmt(v, digits: int = 2) -> tuple[str, str]:
    """(shown text, sort key) of a number that may be missing."""
    if v is None:
        return "–", "-1"
    return (f"{v:.{digits}f}" if isinstance(v, float) else str(v)), repr(v)


def _task_row(r: dict, solutions: dict, submission: dict, page: str, delta: float | None) -> str:
    cls = "solved" if r["score"] == 1.0 else "partly" if r["score"] > 0 else ""
    pics = []
    for k, truth in enumerate(solutions[r["task"]]):
        e = _entry(_entries(submission, r["task"]), k)
        pics.append("<span class=pair>" + "".join(
            thumb(e.get(a), f"test {k} {a.replace('_', ' ')}", mark="ok" if e.get(a) == truth else "bad") for a in ATTEMPTS)
            + "<span class=sep></span>" + thumb(truth, f"test {k} truth", mark="truth") + "</span>")
    cells = [f"<td class=l><a href='tasks/{html.escape(page)}.html'>{html.escape(r['task'])}</a></td>",
             f"<td data-v={r['score']!r}>{r['score']:.2f}</td>", f"<td>{r['correct']}/{r['tests']}</td>"]
    if delta is not None:
        cls_d = "gain" if delta > 0 else "loss" if delta < 0 else ""
        cells.append(f"<td class={cls_d} data-v={delta!r}>{'+' if delta > 0 else ''}{delta:.2f}</td>")
    views = f" / {r['views']:g}" if r.get("views") else ""
    for key, digits, suffix in (("winner_votes", 1, views), ("valid_views", 1, views), ("halting_steps", 2, ""),
                                ("chunk_s_per_input", 3, "")):
        text, v = _fmt(r.get(key), digits)
        cells.append(f"<td data-v='{v}'>{text}{suffix if r.get(key) is not None else ''}</td>")
    cells.append(f"<td data-v={r.get('cells', 0)}>{html.escape(r.get('grid', ''))}</td>")
    cells.append(f"<td class=l>{''.join(pics)}</td>")
    return f"<tr class='{cls}'>{''.join(cells)}</tr>"


def index_page(rows: list[dict], solutions: dict, submission: dict, pages: dict, title: str,
               curves: str | None, comparison: dict | None) -> str:
    s = summary(rows)
    cards = [("score", f"{s['score']:.4f}"), ("tasks", s["tasks"]), ("solved", s["solved_tasks"]),
             ("partly solved", s["partly_solved_tasks"]), ("unsolved", s["unsolved_tasks"]),
             ("test inputs correct", f"{s['correct_inputs']}/{s['test_inputs']}")]
    if comparison is not None:
        cards.append(("other run's score", f"{comparison['other_score']:.4f}"))
    top = ["<div><div class=cards>" + "".join(f"<div class=card>{html.escape(k)}<b>{v}</b></div>" for k, v in cards)
           + "</div>"]
    if comparison is not None:
        top.append(_comparison_html(comparison, pages))
    top.append("</div>")
    if curves:
        top.append(f"<div><img src='{html.escape(curves)}' width=560 alt='training curves'>"
                   "<div class=note>training curves of the run (loss, exact accuracy, held-out pass@2)</div></div>")
    heads = ["task", "score", "correct"] + (["Δ score"] if comparison is not None else []) + [
        "winner votes", "valid views", "halting steps", "chunk s / input", "grid size", "attempt 1 · attempt 2 · truth"]
    delta = comparison["delta"] if comparison is not None else None
    body = "".join(_task_row(r, solutions, submission, pages[r["task"]], (delta or {}).get(r["task"], 0.0) if delta is not None else None)
                   for r in sorted(rows, key=lambda r: (-r["score"], r["task"])))
    note = ("<p class=note>Click a column to sort. Votes and valid views are means over a task's test inputs; "
            "<i>chunk s / input</i> is the prediction chunk's wall time divided evenly among its inputs (views of many "
            "tasks share model batches), not a per-task timing. Pictures per test input: attempt 1, attempt 2 (green border = "
            "equals the truth, red = not), then the truth (dashed). "
            "Numbers also in <a href='tasks.csv'>tasks.csv</a>.</p>")
    return (f"<html><head><meta charset=utf-8><title>{html.escape(title)}</title>{STYLE}</head><body>"
            f"<h1>{html.escape(title)}</h1><div class=top>{''.join(top)}</div>{note}"
            f"<table class=tasks><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in heads)}</tr></thead>"
            f"<tbody>{body}</tbody></table>{SORT_JS}</body></html>")


def _comparison_html(c: dict, pages: dict) -> str:
    def items(lst):
        return ", ".join(f"<a href='tasks/{html.escape(pages[t])}.html'>{html.escape(t)}</a> ({old:.2f}→{new:.2f})"
                         for t, old, new in lst) or "none"

    return (f"<div class=card style='max-width:700px'>Against {html.escape(c.get('other_name', 'the other run'))}: "
            f"<span class=gain>{len(c['gained'])} tasks gained</span>, <span class=loss>{len(c['lost'])} lost</span>"
            f"<div class=gain>gained: {items(c['gained'])}</div><div class=loss>lost: {items(c['lost'])}</div></div>")


def write_report(folder: Path, rows: list[dict], solutions: dict, submission: dict, challenges: dict | None,
                 details: dict, curves: Path | None = None, comparison: dict | None = None,
                 title: str = "Score report") -> pl.DataFrame:
    """index.html, one page per task, tasks.parquet / tasks.csv under `folder`; returns the table."""
    folder.mkdir(parents=True, exist_ok=True)
    add_details(rows, solutions, details)
    if comparison is not None:
        for r in rows:
            r["delta_vs_other"] = comparison["delta"].get(r["task"], 0.0)
    floats = {k: pl.Float64 for k in ("winner_votes", "views", "valid_views", "vote_share", "halting_steps",
                                      "chunk_s_per_input")}
    df = pl.DataFrame(rows, schema_overrides=floats)
    df.write_parquet(folder / "tasks.parquet")
    df.write_csv(folder / "tasks.csv")
    pages_dir = folder / "tasks"
    pages_dir.mkdir(exist_ok=True)
    pages = {r["task"]: safe_name(r["task"]) for r in rows}
    for r in rows:
        ch = (challenges or {}).get(r["task"], {})
        (pages_dir / f"{pages[r['task']]}.html").write_text(
            task_page(r["task"], ch, solutions[r["task"]], _entries(submission, r["task"]), r, details))
    shown = None
    if curves is not None and Path(curves).is_file():
        shutil.copyfile(curves, folder / "curves.png")
        shown = "curves.png"
    (folder / "index.html").write_text(index_page(rows, solutions, submission, pages, title, shown, comparison))
    return df
