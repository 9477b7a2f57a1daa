"""Report numbers: Wilson intervals on known cases, per-task figures, files, CLI."""

import json

import pytest

from roboalign_ros.evaluation.report import summarize, wilson_interval, write_report


def test_wilson_interval_known_cases():
    # 8/10: the textbook Wilson 95% interval is (0.4902, 0.9433)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def rec(task, outcome, progress, duration, trial=1, source="auto"):
    return {"plan": "demo", "policy": "pol", "model": "m", "task": task,
            "instruction": f"do {task}", "trial": trial, "task_trial": trial - 1,
            "outcome": outcome, "progress": progress, "duration": duration,
            "label_source": source, "operator": "ann"}


RECORDS = ([rec("a", "success", 1.0, 10.0)] * 8 + [rec("a", "failure", 0.5, 20.0)] * 2
           + [rec("a", "aborted", 0.0, 3.0)]
           + [rec("b", "failure", 0.0, 30.0, source="manual")] * 2)


def test_summary_numbers():
    s = summarize(RECORDS)
    a, b = s["tasks"]["a"], s["tasks"]["b"]
    assert (a["trials"], a["successes"], a["aborted"]) == (10, 8, 1)  # aborted not counted
    assert a["success_rate"] == pytest.approx(0.8)
    assert (a["ci95_low"], a["ci95_high"]) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert a["mean_progress"] == pytest.approx(0.9) and a["mean_duration"] == pytest.approx(12.0)
    assert b["success_rate"] == 0.0 and b["manual_labels"] == 2
    overall = s["overall"]
    assert (overall["trials"], overall["successes"]) == (12, 8)
    assert overall["ci95_low"] == pytest.approx(wilson_interval(8, 12)[0])
    assert s["plan"] == "demo" and s["operators"] == ["ann"]


def test_write_report_and_cli(tmp_path, capsys):
    from roboalign_ros.apps.evaluate import main

    d = tmp_path / "demo"
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    summary = write_report(d, console=False)
    assert json.loads((d / "summary.json").read_text()) == summary
    png = (d / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    (d / "report.png").unlink()
    assert main(["report", str(d)]) == 0
    out = capsys.readouterr().out
    assert "80%" in out and "49% - 94%" in out and "ALL" in out
    assert (d / "report.png").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
