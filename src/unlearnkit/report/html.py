"""report.html: one self-contained page per run (figures inline as SVG, no scripts, no external files).

Written at the end of every run with --out, and by `unlearnkit report RUN_DIR` from the files a run
wrote (results.json, timings.json, klom.npz). It holds the tables, the figures (also saved as PNG and
SVG under figures/), the config, the forget set, and what is needed to reproduce the numbers: the run
id, the versions, seeds, the cache keys of the reference arms, the device and precision, the machine.
"""
from __future__ import annotations

import html
import io
import json
import logging
import os
import platform
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UnlearnkitError
from ..files import atomic_write, check_writable
from ..metrics import SPLITS
from .index import record
from .results import json_safe, release_output
from .scores import check_run_id

log = logging.getLogger(__name__)

DPI = 120  # the figures' PNG resolution (and any raster part of their SVG)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.wide { overflow-x: auto; } table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .6em; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
tr.floor td { color: #555; font-style: italic; } .note { color: #555; max-width: 70em; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1.2em; } dt { color: #555; }
code { background: #f4f4f4; padding: 0 .25em; }
"""


def _fmt(v, spec: str = "{:.2f}") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not np.isfinite(v):
        return "—"
    return spec.format(v)


def _get(row: dict, *path):
    for p in path:
        if not isinstance(row, dict):
            return None
        row = row.get(p)
    return row


def _columns(results: dict) -> list[tuple[str, callable]]:
    """(header, cell function) of the results table for this kind of run."""
    if "lm_task" in results["config"]:
        cols = [("forget Q", lambda r: _fmt(r.get("forget_quality"), "{:.3g}")),
                ("utility", lambda r: _fmt(r.get("model_utility"), "{:.3f}")),
                ("forget ROUGE", lambda r: _fmt(r.get("forget_rouge"), "{:.3f}")),
                ("probe ROUGE", lambda r: _fmt(r.get("probe_rouge"), "{:.3f}")),
                ("neighbour ROUGE", lambda r: _fmt(r.get("neighbour_rouge"), "{:.3f}")),
                ("fluency", lambda r: _fmt(r.get("fluency"), "{:.2f}"))]
        cols += [(f"AUC {a}", lambda r, a=a: _fmt(_get(r, "mia_auc", a), "{:.3f}")) for a in ("loss", "zlib", "mink", "minkpp")]
    else:
        cols = []
    for s in SPLITS:
        def klom_cell(r, s=s):
            ci = _get(r, "klom_p95_ci", s)
            return _fmt(_get(r, "klom_p95", s)) + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
        cols.append((f"KLoM p95 {s}", klom_cell))
    estimators = sorted({e for r in results["rows"] + [results["noise_floor"]] for e in (r.get("klom_estimators") or {})})
    for e in estimators:
        cols += [(f"{e} p95 forget", lambda r, e=e: _fmt(_get(r, "klom_estimators", e, "p95", "forget"))),
                 (f"{e} mean forget", lambda r, e=e: _fmt(_get(r, "klom_estimators", e, "mean", "forget")))]
    if "lm_task" not in results["config"]:
        cols += [(f"acc {s}", lambda r, s=s: _fmt(_get(r, "accuracy", s), "{:.3f}")) for s in SPLITS]
        cols += [("U-LiRA", lambda r: _fmt(_get(r, "ulira", "accuracy"), "{:.3f}")),
                 ("NeurIPS F", lambda r: _fmt(_get(r, "neurips23", "forget_score"), "{:.3f}")),
                 ("NeurIPS score", lambda r: _fmt(_get(r, "neurips23", "score"), "{:.3f}")),
                 ("MIA (confidence)", lambda r: _fmt(_get(r, "mia", "confidence"), "{:.3f}"))]
    k = next((r["ranking"]["k"] for r in results["rows"] if r.get("ranking")), None)
    if k is not None:  # a recommendation run
        cols += [(f"{m}@{k} {s}", lambda r, m=m, s=s: _fmt(_get(r, "ranking", m, s), "{:.3f}"))
                 for m in ("recall", "ndcg") for s in ("val", "forget")]
    cols += [("seconds", lambda r: _fmt(r.get("seconds"), "{:.1f}")),
             ("GFLOP", lambda r: _fmt(r["flops"] / 1e9 if r.get("flops") is not None else None, "{:.1f}")),
             ("× retrain", lambda r: _fmt(_get(r, "cost_vs_retrain", "flops"), "{:.3f}"))]
    return cols


def _table(results: dict) -> str:
    cols = _columns(results)
    rows = list(results["rows"])
    floor = results["noise_floor"]
    if floor not in rows:
        rows.append(floor)
    out = ["<table><thead><tr><th>method</th>" + "".join(f"<th>{html.escape(h)}</th>" for h, _ in cols) + "</tr></thead><tbody>"]
    for r in rows:
        label = r.get("label", r["method"]) + (" (noise floor)" if r is floor else "") + (" DIVERGED" if r["diverged"] else "")
        cls = ' class="floor"' if r is floor else ""
        out.append(f"<tr{cls}><td>{html.escape(label)}</td>" + "".join(f"<td>{html.escape(f(r))}</td>" for _, f in cols) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def save_figure(out: Path, name: str, fig) -> str:
    """`fig` as out/figures/NAME.png and .svg (each written atomically); returns its inline SVG and closes it.
    The SVG is rendered once, for its file and the page (rendering is most of a cached run's time)."""
    import matplotlib.pyplot as plt
    check_writable(Path(out) / "figures", "the report's figures")
    (Path(out) / "figures").mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", dpi=DPI)
    svg = buffer.getvalue()
    atomic_write(Path(out) / "figures" / f"{name}.png", lambda p: fig.savefig(p, format="png", dpi=DPI))
    atomic_write(Path(out) / "figures" / f"{name}.svg", lambda p: p.write_text(svg, encoding="utf-8"))
    plt.close(fig)
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline SVG in HTML5


def _dl(items: dict) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(str(k))}</dt><dd><code>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</code></dd>"
                            for k, v in items.items()) + "</dl>"


def provenance(results: dict) -> dict:
    import torch
    c = results["config"]
    return {"run id": results.get("run_id"), "unlearnkit": c.get("unlearnkit"), "torch (run)": c.get("torch"),
            "seed": c.get("seed"), "device": c.get("device"), "precision": c.get("precision"),
            **{f"cache key, {k}": v for k, v in (results.get("provenance") or {}).get("cache_keys", {}).items()},
            "python": sys.version.split()[0], "numpy": np.__version__, "torch (report)": torch.__version__,
            "machine": f"{platform.system()} {platform.machine()}, {platform.processor() or 'cpu'}, "
                       f"{torch.get_num_threads()} threads"}


def render(results: dict, figures: dict, legend: list[str]) -> str:
    c = results["config"]
    fs = results["forget_set"]
    ids = fs.get("ids") or []
    forget = {"spec": fs.get("spec"), "seed": fs.get("seed"), "size": fs.get("size", len(ids)),
              "ids (first 40)": ids[:40]}
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>unlearnkit: {html.escape(c['task'])} "
             f"{html.escape(str(c['forget']))}</title><style>{CSS}</style></head><body>",
             f"<h1>unlearnkit run: {html.escape(c['task'])}, forget <code>{html.escape(str(c['forget']))}</code>, "
             f"N = {c['models']} models per arm</h1>",
             "<h2>Results</h2>", f"<div class='wide'>{_table(results)}</div>",
             "".join(f"<p class='note'>{html.escape(line)}</p>" for line in legend),
             "<h2>Figures</h2>"]
    parts += [f"<figure>{svg}</figure>" for svg in figures.values()]
    parts += ["<h2>Forget set</h2>", _dl(forget), "<h2>Config</h2>", _dl(c),
              "<h2>Provenance</h2>", _dl(provenance(results)),
              "<p class='note'>Rerun: <code>unlearnkit run " + html.escape(_command(c)) + "</code></p></body></html>"]
    return "\n".join(parts)


def _command(c: dict) -> str:
    parts = [f"--task {c['task']}", f"--forget {c['forget']}", f"--methods {','.join(c['methods'])}",
             f"--models {c['models']}", f"--seed {c['seed']}", f"--device {c.get('device')}",
             f"--precision {c.get('precision')}"]
    parts += [f"--set {m}.{n}={v}" for m, n, v in c.get("hparams", [])]
    if c.get("trajectories"):
        parts.append(f"--trajectories {c['trajectories']}")
        if "lm_task" in c:
            parts.append(f"--best-step '{c['best_step']}'")
    return " ".join(parts)


def write_report(run_dir, results: dict | None = None) -> Path:
    """report.html and figures/*.png|svg for the run in `run_dir` (its files, or `results` as `run`
    returns them, with wall-clock seconds). Returns the report's path."""
    from .figures import run_figures
    from .lm_table import lm_legend, step_lines
    from .scores import read_results, with_seconds
    from .table import legend as table_legend
    run_dir = Path(run_dir)
    if results is None:
        results = with_seconds(read_results(run_dir), run_dir)
    per_example, splits = _klom_arrays(run_dir, results["run_id"])
    figures = run_figures(results, per_example, splits, _trajectory_arrays(run_dir, results["run_id"]))
    svgs = {name: save_figure(run_dir, name, fig) for name, fig in figures.items()}
    legend = (lm_legend(results) + step_lines(results["rows"])[1:] if "lm_task" in results["config"]
              else table_legend(results))
    atomic_write(run_dir / "report.html", lambda p: p.write_text(render(results, svgs, legend)))
    return run_dir / "report.html"


def _trajectory_arrays(run_dir: Path, run_id: str) -> dict[str, np.ndarray]:
    """The trajectory members of scores.npz (loaded alone: the file can be hundreds of MB)."""
    try:
        with np.load(run_dir / "scores.npz", allow_pickle=False) as z:
            owner = {k: z[k] for k in ("run_id",) if k in z.files}
            arrays = {k: z[k] for k in z.files if k.startswith("trajectory/") and not k.endswith("/margins")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("%s/scores.npz cannot be read (%s): the report has no trajectory figures", run_dir,
                    type(e).__name__)
        return {}
    check_run_id(run_dir / "scores.npz", owner, run_id)
    return arrays


def _klom_arrays(run_dir: Path, run_id: str) -> tuple[dict, dict]:
    try:
        with np.load(run_dir / "klom.npz", allow_pickle=False) as z:
            owner = {k: z[k] for k in ("run_id",) if k in z.files}
            per_example = {k[len("klom/"):]: z[k] for k in z.files if k.startswith("klom/")}
            splits = {s: z[f"split/{s}"] for s in SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UnlearnkitError(f"{run_dir}/klom.npz cannot be read ({type(e).__name__}); run the job again, or "
                              f"`unlearnkit rescore {run_dir}` to recompute it from scores.npz") from None
    check_run_id(run_dir / "klom.npz", owner, run_id)
    return per_example, splits


def write_grid_report(out, title: str, table: str, figures: dict, results: dict) -> Path:
    """report.html and figures/*.png|svg for a study that prints one table and draws its own figures
    (`llm ood`, `corrective`): the table, the figures, the config and the provenance."""
    out = Path(out)
    svgs = [save_figure(out, name, fig) for name, fig in figures.items()]
    c = results["config"]
    page = "\n".join([
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>unlearnkit: {html.escape(title)}"
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}, N = {c['models']} models per arm</h1>",
        f"<h2>Results</h2><div class='wide'><pre>{html.escape(table)}</pre></div>",
        *(f"<figure>{svg}</figure>" for svg in svgs), "<h2>Config</h2>", _dl(c),
        "<h2>Provenance</h2>", _dl(provenance(results)), "</body></html>"])
    atomic_write(out / "report.html", lambda p: p.write_text(page))
    return out / "report.html"


def write_study_output(out, kind: str, results: dict, title: str, table: str, figures: dict,
                       index_config: dict) -> Path:
    """Everything a study (corrective, generalisation, ID vs OOD) leaves in `out`: `<kind>.json`, its report
    (the table, its figures), its line in the run index (`index_config`: the settings listed there); then
    the folder is released."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{kind}.json", lambda p: p.write_text(json.dumps(json_safe(results), indent=2)))
    page = write_grid_report(out, title, table, figures, results)
    record(out, {"run_id": results["run_id"], "config": index_config}, kind=kind)
    release_output(out)
    return page


def write_study_report(out, summary: dict, table: str) -> Path:
    """report.html and figures/study.png|svg of a study: its table, the per-cell figure, links to the cells' reports."""
    from .figures import study_bars
    out = Path(out)
    svg = save_figure(out, "study", study_bars(summary))
    links = "".join(f"<li><a href='{html.escape(os.path.relpath(c['path'], out))}/report.html'>"
                    f"{html.escape(json.dumps(c['cell']))}</a> (run {html.escape(c['run_id'])})</li>" for c in summary["cells"])
    page = "\n".join([
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>unlearnkit study {summary['study_id']}"
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>unlearnkit study {summary['study_id']}: {len(summary['cells'])} cells</h1>",
        f"<h2>Results</h2><div class='wide'><pre>{html.escape(table)}</pre></div>", f"<figure>{svg}</figure>",
        f"<h2>Cells</h2><ul>{links}</ul>", "<h2>Spec</h2>", _dl({"run": summary["run"], "grid": summary["grid"]}),
        "<h2>Provenance</h2>", _dl(provenance({"run_id": summary["study_id"], "config": {}})), "</body></html>"])
    atomic_write(out / "report.html", lambda p: p.write_text(page))
    return out / "report.html"
