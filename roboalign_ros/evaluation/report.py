"""Evaluation report: per-task success rate with Wilson 95% intervals, progress, durations.

``summarize(records)`` -> a JSON-able dict; ``render_table`` prints it with rich;
``plot_summary`` draws a bar chart (matplotlib, Agg); ``write_report(results_dir)`` does all
three and saves ``summary.json`` and ``report.png`` next to ``results.jsonl``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from roboalign_ros.evaluation.results import COUNTED, RESULTS_FILE, load_records

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"successes: {successes} is not in [0, n={n}]")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _group(records: list[dict]) -> dict:
    counted = [r for r in records if r["outcome"] in COUNTED]
    k = sum(r["outcome"] == "success" for r in counted)
    n = len(counted)
    low, high = wilson_interval(k, n)
    durations = [float(r.get("duration", 0.0)) for r in counted]
    return {
        "trials": n, "successes": k, "success_rate": k / n if n else None,
        "ci95_low": low, "ci95_high": high,
        "mean_progress": sum(float(r["progress"]) for r in counted) / n if n else None,
        "mean_duration": sum(durations) / n if n else None,
        "max_duration": max(durations) if durations else None,
        "aborted": sum(r["outcome"] == "aborted" for r in records),
        "manual_labels": sum(r.get("label_source") == "manual" for r in counted),
    }


def summarize(records: list[dict]) -> dict:
    """Per-task and overall figures (aborted trials are listed but never counted)."""
    tasks: dict[str, list[dict]] = {}
    for r in records:
        tasks.setdefault(r["task"], []).append(r)
    per_task = {}
    for task_id, rs in tasks.items():
        per_task[task_id] = {"instruction": rs[0]["instruction"], **_group(rs)}
    plans = sorted({r.get("plan", "") for r in records})
    return {"plan": plans[0] if len(plans) == 1 else plans,
            "policy": records[0].get("policy", "") if records else "",
            "model": records[0].get("model", "") if records else "",
            "operators": sorted({r.get("operator", "") for r in records} - {""}),
            "tasks": per_task, "overall": _group(records)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def render_table(summary: dict, console=None) -> None:
    """Print the summary as a rich table (to ``console``, default stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"evaluation '{summary['plan']}'  policy: {summary['policy'] or '-'}  "
                        f"model: {summary['model'] or '-'}")
    for name, justify in (("task", "left"), ("n", "right"), ("success", "right"),
                          ("rate", "right"), ("95% CI (Wilson)", "center"),
                          ("progress", "right"), ("duration s", "right"),
                          ("aborted", "right")):
        table.add_column(name, justify=justify)
    rows = list(summary["tasks"].items()) + [("ALL", summary["overall"])]
    for i, (name, g) in enumerate(rows):
        table.add_row(name, str(g["trials"]), str(g["successes"]), _pct(g["success_rate"]),
                      f"{_pct(g['ci95_low'])} - {_pct(g['ci95_high'])}",
                      _num(g["mean_progress"]), _num(g["mean_duration"], ".1f"),
                      str(g["aborted"]), end_section=i == len(rows) - 2)
    console.print(table)


def plot_summary(summary: dict, path: str | Path) -> Path:
    """Bar chart of per-task success rates with Wilson 95% error bars, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["tasks"]) + ["ALL"]
    groups = list(summary["tasks"].values()) + [summary["overall"]]
    rates = [g["success_rate"] or 0.0 for g in groups]
    low = [r - g["ci95_low"] for r, g in zip(rates, groups, strict=True)]
    high = [g["ci95_high"] - r for r, g in zip(rates, groups, strict=True)]
    progress = [g["mean_progress"] or 0.0 for g in groups]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 4.2))
    x = list(range(len(names)))
    colors = ["tab:blue"] * (len(names) - 1) + ["tab:gray"]
    ax.bar(x, rates, 0.6, yerr=[low, high], capsize=5, color=colors, label="success rate")
    ax.scatter(x, progress, marker="D", color="tab:orange", zorder=3, label="mean progress")
    for xi, g in zip(x, groups, strict=True):
        ax.text(xi, 1.03, f"{g['successes']}/{g['trials']}", ha="center", fontsize=8)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("success rate (Wilson 95% CI)")
    ax.set_title(f"{summary['plan']}: {summary['policy'] or summary['model'] or ''}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def results_path(path: str | Path) -> Path:
    """A results directory (or the results file itself) -> the results file."""
    path = Path(path).expanduser()
    return path / RESULTS_FILE if path.is_dir() else path


def write_report(results: str | Path, out_dir: str | Path | None = None,
                 console=None) -> dict:
    """Summarize a results file/dir: print the table, write summary.json and report.png."""
    path = results_path(results)
    if not path.is_file():
        raise ValueError(f"results: {path} not found")
    summary = summarize(load_records(path))
    out = Path(out_dir) if out_dir else path.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_summary(summary, out / "report.png")
    if console is not False:
        render_table(summary, console)
    return summary
