"""The report of ``roboalign repro mini``: one table, ``report.png`` and ``summary.json``.

Rows are the configurations of RoboAlign's comparison (untrained, SFT without reasoning, SFT
with teacher reasoning, SFT + GRPO, and the MLLM's own action tokens for the last two), columns
the tasks: successes / trials with 95% Wilson intervals, all on the same held-out seeds. Next
to them the offline figures: FAST-token prefix accuracy on held-out frames, the heads'
held-out action MSE (normalized units, with the mean-chunk baseline), the GRPO reward curve,
the ROS-graph evaluation of the best policy, and the wall time of every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from roboalign_ros.apps.repro_plan import LABELS, STAGES, evaluation_seeds


def _cell(group: dict | None) -> str:
    if not group or not group.get("trials"):
        return "-"
    return (f"{group['successes']}/{group['trials']} ({100 * group['success_rate']:.0f}%, "
            f"{100 * group['ci95_low']:.0f}-{100 * group['ci95_high']:.0f})")


def write_repro_report(repro, out: Path) -> dict:
    """Write the report of ``repro`` (a :class:`~roboalign_ros.apps.repro.Repro`) to ``out``."""
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    state, tasks = repro.state, list(repro.cfg.tasks)
    evaluated = state.get("evaluate", {}).get("result", {})
    offline = state.get("offline", {}).get("result", {})
    heads = {c: state.get(f"head_{k}", {}).get("result", {}).get("metrics", {})
             for c, k in (("sft_plain", "plain"), ("sft", "sft"), ("align", "align"))}
    graph = state.get("graph", {}).get("result", {})
    history_path = repro.path("align", "align_history.json")
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    rewards = [h["reward"] for h in history if "reward" in h]

    table = Table(title="RoboAlign in miniature: success on held-out seeds (95% Wilson)")
    table.add_column("configuration")
    for t in tasks:
        table.add_column(t)
    table.add_column("all")
    table.add_column("FAST prefix acc.", justify="right")
    table.add_column("head MSE (baseline)", justify="right")
    rows = {}
    for name, summary in evaluated.items():
        per_task = summary.get("tasks", {})
        key = name.replace("_tokens", "")
        acc = offline.get(key, {}).get("prefix_accuracy") if name.endswith("_tokens") or \
            name in offline else None
        mse = heads.get(name, {})
        rows[name] = {"label": LABELS[name], "tasks": {t: per_task.get(t) for t in tasks},
                      "overall": summary.get("overall"), "prefix_accuracy": acc,
                      "head_mse": mse.get("mse"), "baseline_mse": mse.get("baseline_mse")}
        table.add_row(LABELS[name], *[_cell(per_task.get(t)) for t in tasks],
                      _cell(summary.get("overall")),
                      "-" if acc is None else f"{acc:.3f}",
                      "-" if not mse else f"{mse['mse']:.3f} ({mse['baseline_mse']:.3f})")
    if graph.get("summary"):
        g = graph["summary"]
        table.add_row(f"ROS graph: {LABELS[graph['configuration']]}",
                      *[_cell(g.get("tasks", {}).get(t)) for t in tasks],
                      _cell(g.get("overall")), "", "")
    repro.console.print(table)
    times = {s: state[s]["seconds"] for s in STAGES if state.get(s, {}).get("status") == "done"}
    summary = {"configurations": rows, "graph": graph, "offline": offline,
               "grpo_reward_curve": rewards, "stage_seconds": times,
               "total_seconds": sum(times.values()),
               "seeds": {n: evaluation_seeds(repro.cfg, n) for n in evaluated}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(rows, graph, rewards, tasks, out / "report.png")
    repro.log(f"report: {out / 'report.png'}, {out / 'summary.json'}")
    return {"report": str(out / "report.png"), "summary": str(out / "summary.json")}


def _plot(rows: dict, graph: dict, rewards: list, tasks: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})
    names = list(rows)
    if graph.get("summary"):
        names.append("graph")
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(tasks) + 1)
    for i, name in enumerate(names):
        if name == "graph":
            g = graph["summary"]
            groups = [g.get("tasks", {}).get(t) for t in tasks] + [g.get("overall")]
            label = "ROS graph: " + rows[graph["configuration"]]["label"]
        else:
            groups = [rows[name]["tasks"][t] for t in tasks] + [rows[name]["overall"]]
            label = rows[name]["label"]
        rate = np.array([(g or {}).get("success_rate") or 0.0 for g in groups])
        low = np.array([(g or {}).get("ci95_low") or 0.0 for g in groups])
        high = np.array([(g or {}).get("ci95_high") or 0.0 for g in groups])
        ax.bar(x + i * width, rate, width, yerr=[rate - low, high - rate], capsize=2,
               label=label)
    ax.set_xticks(x + width * (len(names) - 1) / 2, [*tasks, "all"], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("held-out seeds, headless sim (and the ROS graph)")
    ax2.plot(rewards, marker=".")
    ax2.set_xlabel("GRPO step")
    ax2.set_ylabel("mean reward (r_format + r_action) / 2")
    ax2.set_title("alignment reward")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
