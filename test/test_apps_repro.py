"""roboalign repro mini: config checks, stage bookkeeping (resume, redo, timing), the report."""

import json
from pathlib import Path

import pytest

from roboalign_ros.apps import repro as rp
from roboalign_ros.training.stages import STAGES


def test_the_shipped_config_loads_and_names_known_tasks_and_stage_configs():
    from roboalign_ros.robot import package_path

    cfg = rp.load_repro_config(package_path("config", "repro", "mini.yaml"))
    cfg.validate()
    assert len(cfg.tasks) == 3
    kinds = {t.split("_")[0] for t in cfg.tasks}
    assert kinds == {"pick", "push", "place"}   # a pick, a push and a place into the bowl
    for stage in STAGES:                                 # every registered training stage
        path = getattr(cfg, stage)
        assert package_path(*path.split("/")).is_file(), path


def test_the_report_does_not_import_the_app_that_calls_it():
    import ast

    from roboalign_ros.apps import repro_report

    tree = ast.parse(Path(repro_report.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "roboalign_ros.apps.repro" not in imported          # repro -> repro_report only
    assert "roboalign_ros.apps.repro_plan" in imported


@pytest.mark.parametrize("bad, field", [
    ({"tasks": ["fly_away"]}, "tasks"), ({"episodes": 0}, "episodes"),
    ({"record_workers": 0}, "record_workers"), ({"eval_max_rate": -5.0}, "eval_max_rate"),
    ({"configurations": ["magic"]}, "configurations"), ({"overrides": {"nap": []}}, "overrides"),
])
def test_bad_values_are_named(bad, field):
    with pytest.raises(ValueError, match=field):
        rp.ReproConfig(**bad).validate()


def test_headless_and_graph_evaluations_share_the_decision_rate_cap(tmp_path, monkeypatch):
    import types

    from roboalign_ros.apps import evaluate as eval_cli
    from roboalign_ros.evaluation import headless

    seen = {}

    def fake_evaluate(model, tasks, seeds, out, **options):
        seen.setdefault("headless", []).append(options["max_rate"])
        summary = {"overall": {"successes": 1, "trials": 2, "success_rate": 0.5}}
        return types.SimpleNamespace(summary=summary, episodes_per_minute=1.0)

    def fake_main(argv):
        seen["graph"] = float(argv[argv.index("--max-rate") + 1])
        results = Path(argv[argv.index("--results-dir") + 1]) / "repro_sft"
        results.mkdir(parents=True)
        (results / "summary.json").write_text(json.dumps({"overall": {}}))
        return 0

    monkeypatch.setattr(headless, "evaluate", fake_evaluate)
    monkeypatch.setattr(eval_cli, "main", fake_main)
    repro = rp.Repro(rp.ReproConfig(out=str(tmp_path), eval_max_rate=4.0,
                                    configurations=["sft"], graph_seeds=2))
    repro.state["evaluate"] = {"result": repro.stage_evaluate()}
    assert repro.stage_graph()["configuration"] == "sft"
    assert seen == {"headless": [4.0], "graph": 4.0}
    assert eval_cli.parser().parse_args(["run", "--max-rate", "4"]).max_rate == 4.0


def test_unknown_keys_in_the_yaml_are_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("episodes: 3\nepisdoes: 4\n")
    with pytest.raises(ValueError, match="episdoes"):
        rp.load_repro_config(path)


def test_stages_run_once_are_skipped_and_interrupts_resume(tmp_path, monkeypatch):
    calls, failed = [], []

    def fake(name, fail_once=False):
        def stage(self):
            calls.append(name)
            if fail_once and not failed:
                failed.append(name)
                raise RuntimeError("interrupted")
            return {"stage": name}
        return stage

    for stage in rp.STAGES:
        monkeypatch.setattr(rp.Repro, f"stage_{stage}", fake(stage, fail_once=stage == "sft"))
    cfg = rp.ReproConfig(out=str(tmp_path / "mini"))
    with pytest.raises(RuntimeError, match="interrupted"):
        rp.Repro(cfg).run()
    state = json.loads((tmp_path / "mini" / "repro_state.json").read_text())
    assert list(state) == list(rp.STAGES[:rp.STAGES.index("sft")])   # up to the interrupt
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in state.values())
    calls.clear()
    rp.Repro(cfg).run()                                 # resumes: only what was left
    assert calls == list(rp.STAGES[rp.STAGES.index("sft"):])
    calls.clear()
    assert rp.main(["mini", "--config", _write(tmp_path, cfg), "--redo", "report"]) == 0
    assert calls == ["report"]
    log = (tmp_path / "mini" / "repro.log").read_text()
    assert "record: running" in log and "skipped" in log


def _write(tmp_path, cfg):
    import dataclasses

    import yaml

    path = tmp_path / "repro.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
    return str(path)


def test_report_table_png_and_summary_from_a_state(tmp_path):
    cfg = rp.ReproConfig(out=str(tmp_path / "mini"), eval_seeds=2, eval_seeds_slow=1)
    repro = rp.Repro(cfg)

    def group(k, n):
        from roboalign_ros.evaluation.report import wilson_interval

        lo, hi = wilson_interval(k, n)
        return {"trials": n, "successes": k, "success_rate": k / n, "ci95_low": lo,
                "ci95_high": hi}

    tasks = cfg.tasks
    repro.state = {
        "evaluate": {"status": "done", "seconds": 5.0, "result": {
            "sft": {"tasks": {t: group(1, 2) for t in tasks}, "overall": group(3, 6)},
            "untrained": {"tasks": {t: group(0, 1) for t in tasks}, "overall": group(0, 3)}}},
        "head_sft": {"status": "done", "seconds": 2.0,
                     "result": {"metrics": {"mse": 0.2, "baseline_mse": 1.0}}},
        "offline": {"status": "done", "seconds": 1.0,
                    "result": {"sft": {"prefix_accuracy": 0.4, "format_rate": 1.0}}},
    }
    out = repro.stage_report()
    summary = json.loads(open(out["summary"]).read())
    row = summary["configurations"]["sft"]
    assert row["overall"]["successes"] == 3 and row["head_mse"] == 0.2
    assert row["prefix_accuracy"] == 0.4
    assert summary["seeds"]["sft"] == [100000, 100001] and summary["seeds"]["untrained"] == [100000]
    assert summary["total_seconds"] == 8.0
    assert (tmp_path / "mini" / "report" / "report.png").stat().st_size > 10_000
