"""`roboalign bench serving` runs and measures each mode (a short run: no figure asserted
beyond what each mode must do)."""

import runpy
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_serving.py"


def test_each_mode_serves_chunks_and_only_reasoning_modes_reason(capsys):
    n = torch.get_num_threads()
    try:
        main = runpy.run_path(str(SCRIPT))["main"]
        rows = main(["--seconds", "1.5", "--threads", "1", "--new-tokens", "8",
                     "--camera-rate", "20", "--attention-period", "0.2"])
    finally:
        torch.set_num_threads(n)
    assert set(rows) == {"off", "inline", "async", "attention"}
    assert all(r["chunks"] > 3 for r in rows.values())
    assert rows["off"]["reasonings"] == 0
    assert rows["inline"]["reasonings"] >= 1 and rows["async"]["reasonings"] >= 1
    assert rows["attention"]["attention_maps"] >= 1
    assert all(rows[m]["attention_maps"] == 0 for m in ("off", "inline", "async"))
    assert "gap p99" in capsys.readouterr().out
