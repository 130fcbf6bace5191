"""``report.html`` + PNG plots from the metrics of one evaluation, readable offline.

Every plot is a PNG file beside ``report.html`` (matplotlib, Agg backend) and the page refers
to them by relative name; the page has inline CSS only: no script, no network, no CDN. The
plots drawn depend on what the metrics hold: ROC and reliability diagram (rankers), per-slice
AUC and calibration with intervals, LT7/LT14 distributions, LT7 lift per simulated arm,
recall/NDCG@K (two-tower), and the unified-embedding Pareto plot when its benchmark result
exists (copied in, so the directory is self-contained).
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recsys.atomic import atomic_file  # noqa: E402

REPORT = "report.html"
PARETO = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "unified_pareto.png"
_FIGSIZE = (6.4, 4.0)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def plot_roc(metrics: Mapping[str, Any], path: Path) -> None:
    roc = metrics["curves"]["roc"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot(roc["fpr"], roc["tpr"], lw=2, label=f"AUC {metrics['overall']['auc']:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_reliability(metrics: Mapping[str, Any], path: Path) -> None:
    rel = metrics["curves"]["reliability"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    ax.plot(rel["predicted"], rel["observed"], marker="o", lw=2, label="model")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title=f"Reliability (calibration {metrics['overall']['calibration']:.3f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    _save(fig, path)


def _bars(ax: plt.Axes, names: list[str], values: list[float], cis: list[list[float]]) -> None:
    lo = [max(v - c[0], 0.0) if c else 0.0 for v, c in zip(values, cis, strict=True)]
    hi = [max(c[1] - v, 0.0) if c else 0.0 for v, c in zip(values, cis, strict=True)]
    ax.bar(range(len(names)), values, yerr=[lo, hi], capsize=4, color="#4c78a8")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")


def plot_slices(metrics: Mapping[str, Any], path: Path) -> None:
    slices = {"all": metrics["overall"], **metrics["slices"]}
    names = list(slices)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, ref in ((axes[0], "auc", 0.5), (axes[1], "calibration", 1.0)):
        values = [float(slices[n][metric]) for n in names]
        cis = [slices[n].get(f"{metric}_ci", []) for n in names]
        _bars(ax, names, values, cis)
        ax.axhline(ref, color="grey", ls="--", lw=1)
        ax.set(title=f"{metric} per slice (95% CI)", ylabel=metric)
    _save(fig, path)


def plot_lt(metrics: Mapping[str, Any], path: Path) -> None:
    lt = metrics["lt"]
    cols = [c for c in ("lt7", "lt14") if "histogram" in lt.get(c, {})]
    fig, axes = plt.subplots(1, len(cols), figsize=(5.2 * len(cols), 3.8), squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        hist = lt[col]["histogram"]
        ax.bar([int(k) for k in hist], list(hist.values()), color="#59a14f")
        ax.set(
            title=f"{col.upper()} over user-days (mean {lt[col]['mean']:.2f})",
            xlabel="active days",
            ylabel="user-days",
        )
    _save(fig, path)


def plot_ab(metrics: Mapping[str, Any], path: Path) -> None:
    arms = metrics["ab"]["arms"]
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    _bars(ax, [a["policy"] for a in arms], [a["lift"] for a in arms], [a["lift_ci"] for a in arms])
    ax.axhline(0, color="grey", lw=1)
    ax.set(
        title=f"LT7 lift over {metrics['ab']['control']} ({metrics['ab']['days']} simulated days)",
        ylabel="LT7 lift (active days)",
    )
    _save(fig, path)


def plot_retrieval(metrics: Mapping[str, Any], path: Path) -> None:
    r = metrics["retrieval"]
    ks = sorted(int(k.split("@")[1]) for k in r if k.startswith("recall@") and "_ci" not in k)
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    for name in ("recall", "ndcg"):
        values = [r[f"{name}@{k}"] for k in ks]
        lo = [v - r[f"{name}@{k}_ci"][0] for v, k in zip(values, ks, strict=True)]
        hi = [r[f"{name}@{k}_ci"][1] - v for v, k in zip(values, ks, strict=True)]
        ax.errorbar(ks, values, yerr=[lo, hi], marker="o", capsize=4, label=name)
    ax.set(xscale="log", xlabel="K", ylabel="value", title="Retrieval on the test split (95% CI)")
    ax.legend()
    _save(fig, path)


PLOTS: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool], Callable[..., None]]] = {
    "roc.png": ("ROC", lambda m: "roc" in m.get("curves", {}), plot_roc),
    "reliability.png": (
        "Reliability diagram",
        lambda m: "reliability" in m.get("curves", {}),
        plot_reliability,
    ),
    "slices.png": ("Per-slice metrics", lambda m: "slices" in m, plot_slices),
    "lt.png": (
        "LT distributions (user-days with a complete window)",
        lambda m: any("histogram" in m.get("lt", {}).get(c, {}) for c in ("lt7", "lt14")),
        plot_lt,
    ),
    "ab_lift.png": ("Simulated A/B: LT7 lift per arm", lambda m: "ab" in m, plot_ab),
    "retrieval.png": ("Retrieval recall and NDCG", lambda m: "retrieval" in m, plot_retrieval),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2:
        return f"{int(value)}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.4f}, {value[1]:.4f}]"
    return html.escape(str(value))


def _metric_table(title: str, values: Mapping[str, Any]) -> str:
    names = [k for k in values if not k.endswith("_ci") and not isinstance(values[k], dict)]
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(values[n])}</td>"
        f"<td>{_fmt(values.get(n + '_ci', ''))}</td></tr>"
        for n in names
    )
    return (
        f"<h2>{html.escape(title)}</h2><table><tr><th>metric</th><th>value</th>"
        f"<th>95% CI</th></tr>{rows}</table>"
    )


def _slice_table(slices: Mapping[str, Mapping[str, Any]]) -> str:
    cols = ("rows", "users", "auc", "gauc", "logloss", "ne", "calibration")
    head = "".join(f"<th>{c}</th>" for c in ("slice", *cols))
    body = ""
    for name, m in slices.items():
        cells = "".join(
            f"<td>{_fmt(m[c])}"
            + (f"<br><small>{_fmt(m[c + '_ci'])}</small>" if c + "_ci" in m else "")
            + "</td>"
            for c in cols
        )
        body += f"<tr><td>{html.escape(name)}</td>{cells}</tr>"
    return f"<h2>Slices</h2><table><tr>{head}</tr>{body}</table>"


def _ab_table(ab: Mapping[str, Any]) -> str:
    order = ab.get("offline_vs_lt", {})
    head = (
        "<th>policy</th><th>users</th><th>LT7</th><th>lift</th><th>offline AUC</th>"
        "<th>offline GAUC</th>"
    )
    body = "".join(
        f"<tr><td>{html.escape(a['policy'])}</td><td>{a['users']}</td>"
        f"<td>{a['lt7']:.3f}<br><small>{_fmt(a['lt7_ci'])}</small></td>"
        f"<td>{a['lift']:+.3f}<br><small>{_fmt(a['lift_ci'])}</small></td>"
        f"<td>{_fmt(a.get('auc', ''))}</td><td>{_fmt(a.get('gauc', ''))}</td></tr>"
        for a in ab["arms"]
    )
    note = ""
    if order:
        note = (
            f"<p>Offline AUC vs LT7 ordering over {len(order['policies'])} policies: Spearman "
            f"{order['spearman']:.3f}, Kendall {order['kendall']:.3f}.</p>"
        )
    return f"<h2>Simulated A/B ({ab['days']} days)</h2><table><tr>{head}</tr>{body}</table>{note}"


CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
    "margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "td:first-child{text-align:left}figure{display:inline-block;margin:0 1em 1em 0}"
    "img{max-width:100%;border:1px solid #eee}"
)


def write_report(metrics: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Draw the plots that ``metrics`` supports into ``out_dir`` and write ``report.html``
    (atomically); returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    for name, (title, applies, draw) in PLOTS.items():
        if applies(metrics):
            draw(metrics, out / name)
            figures.append((name, title))
    if PARETO.is_file():
        shutil.copyfile(PARETO, out / PARETO.name)
        figures.append((PARETO.name, "Unified embedding: test AUC vs parameters (benchmark)"))
    parts = [
        f"<h1>Evaluation of {html.escape(str(metrics.get('version', '?')))} "
        f"({html.escape(str(metrics.get('kind', '?')))})</h1>",
        f"<p>Examples: {html.escape(str(metrics.get('examples_dir', '')))}, split "
        f"{html.escape(str(metrics.get('split', 'test')))}; intervals: user bootstrap, "
        f"{metrics.get('bootstrap', {}).get('replicates', '?')} replicates.</p>",
    ]
    if "overall" in metrics:
        parts.append(_metric_table("Overall", metrics["overall"]))
    if "retrieval" in metrics:
        parts.append(_metric_table("Retrieval", metrics["retrieval"]))
    if "slices" in metrics:
        parts.append(_slice_table(metrics["slices"]))
    lt = metrics.get("lt", {})
    for col in ("lt7", "lt14"):
        if col in lt:
            shown = {k: v for k, v in lt[col].items() if k != "histogram"}
            parts.append(_metric_table(f"{col.upper()} from the logs", shown))
    head = lt.get("head", {})
    if head:
        parts.append(_metric_table("LT head vs logged LT7", head))
    if "ab" in metrics:
        parts.append(_ab_table(metrics["ab"]))
    parts.append("<h2>Plots</h2>")
    parts += [
        f'<figure><img src="{name}" alt="{html.escape(title)}"><figcaption>'
        f"{html.escape(title)}</figcaption></figure>"
        for name, title in figures
    ]
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Evaluation report</title>'
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    path = out / REPORT
    with atomic_file(path, "w") as f:
        f.write(page)
    return path
