"""The run report: one figure with every stage's numbers, markdown, HTML, a screen summary."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FIGURE = "report.png"


def _wald(hits: int, n: int) -> tuple[float, float]:
    rate = hits / n if n else 0.0
    half = 1.96 * math.sqrt(rate * (1 - rate) / n) if n else 0.0
    return rate, half


def plot_run(summary: dict[str, Any], path: Path) -> Path | None:
    """Offline gate, staging load test and canary arms side by side; None if nothing ran."""
    steps = summary["steps"]
    panels = [k for k in ("offline_gate", "staging", "canary") if k in steps and (
        k != "staging" or steps[k].get("load")) and (k != "canary" or steps[k].get("analysis"))]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        step = steps[name]
        if name == "offline_gate":
            bars = [(label, step[key], color) for label, key, color in (
                ("candidate", "candidate_ndcg", "tab:blue"),
                ("production", "production_ndcg", "tab:gray")) if step[key] is not None]
            ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
            title = "offline gate (panel, full ranking)"
            if step["gain_ci"]:
                low, high = step["gain_ci"]
                title += f"\ngain {step['gain']:+.4f} [{low:+.4f}, {high:+.4f}]"
            ax.set(title=title, ylabel="NDCG@10")
        elif name == "staging":
            load = step["load"]
            ax.bar(["p50", "p95", "p99"], [load["p50_ms"], load["p95_ms"], load["p99_ms"]],
                   color="tab:green")
            slo = summary.get("slo_p95_ms")
            if slo:
                ax.axhline(slo, color="tab:red", linestyle="--", label=f"SLO p95 {slo:g} ms")
                ax.legend(loc="upper left")
            ax.set(title=f"staging load test: {load['rps']:.0f} req/s, "
                         f"{load['failures']} errors", ylabel="latency (ms)")
        else:
            analysis = step["analysis"]
            arms = ["production", "canary"]
            rates = [_wald(analysis[a]["hits"], analysis[a]["requests"] - analysis[a]["errors"])
                     for a in arms]
            ax.bar(arms, [r for r, _ in rates], yerr=[h for _, h in rates], capsize=6,
                   color=["tab:gray", "tab:orange"])
            # Per-request intervals, for scale: the decision's test counts users when both
            # arms know theirs (p below), else requests.
            unit = ("user-level" if analysis["canary"].get("users")
                    and analysis["production"].get("users") else "per-request")
            ax.set(title=f"canary: online hit rate (per-request 95% CI)\n"
                         f"{unit} p={analysis['p_value']:.3f}, "
                         f"{'promote' if analysis['promote'] else 'roll back'}",
                   ylabel="hits / served lists")
    fig.suptitle(f"{summary.get('decision', '?')}: {summary.get('reason', '')}"[:110],
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    steps = summary["steps"]
    lines = [f"decision:   {str(summary.get('decision')).upper()}  ({summary.get('reason')})",
             f"trigger:    {summary.get('trigger')}   candidate: {summary.get('candidate')}   "
             f"backend: {summary.get('backend')}   {summary.get('seconds')} s",
             f"versions:   candidate {summary.get('candidate_version') or '-'}, production "
             f"before {summary.get('production_version') or '-'}"]
    if "data" in steps:
        d = steps["data"]
        lines.append(f"data:       {d['interactions']:,} interactions, version "
                     f"{d['data_version']}, {d['used']} feedback watches used")
    if "offline_gate" in steps:
        g = steps["offline_gate"]
        prod, cand = (("-" if g[key] is None else f"{g[key]:.4f}")
                      for key in ("production_ndcg", "candidate_ndcg"))
        lines.append(f"gate:       NDCG@10 candidate {cand} vs production {prod} on "
                     f"{g['users']} panel users -> {'pass' if g['passed'] else 'FAIL'}")
    if steps.get("staging", {}).get("load"):
        s = steps["staging"]
        lines.append(f"staging:    {sum(s['checks'].values())}/{len(s['checks'])} checks, "
                     f"{s['load']['rps']:.0f} req/s, p95 {s['load']['p95_ms']:.0f} ms")
    if steps.get("canary", {}).get("analysis"):
        a = steps["canary"]["analysis"]
        lines.append(f"canary:     hit rate {a['canary']['hit_rate']:.3f} "
                     f"({a['canary']['requests']} req) vs production "
                     f"{a['production']['hit_rate']:.3f} ({a['production']['requests']} req), "
                     f"p={a['p_value']:.3f}")
    if "promotion" in steps:
        p = steps["promotion"]
        lines.append(f"promotion:  {p['deploy']['how']} in {p['deploy']['seconds']} s, "
                     f"{p['failed_requests']} failed of {p['probe_requests']} probe requests")
    return "\n".join(lines)


def write_report(folder: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """``report.md``, ``report.html`` and ``report.png`` in ``folder``."""
    figure = plot_run(summary, folder / FIGURE)
    text = format_summary(summary)
    md = [f"# movierec pipeline run {summary['started_at']}", "", "```", text, "```", ""]
    if figure is not None:
        md += [f"![stages]({FIGURE})", ""]
    md += ["## Every number", "", "```json", json.dumps(summary, indent=2, default=str), "```"]
    (folder / "report.md").write_text("\n".join(md))
    image = ""
    if figure is not None:
        encoded = base64.b64encode(figure.read_bytes()).decode()
        image = f'<img alt="stages" src="data:image/png;base64,{encoded}">'
    (folder / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>movierec run</title>"
        f"<h1>movierec pipeline run {html.escape(summary['started_at'])}</h1>"
        f"<pre>{html.escape(text)}</pre>{image}"
        f"<details><summary>every number</summary><pre>"
        f"{html.escape(json.dumps(summary, indent=2, default=str))}</pre></details>")
    paths = {"markdown": folder / "report.md", "html": folder / "report.html"}
    if figure is not None:
        paths["figure"] = figure
    return paths
