"""Crash safety: kill -9 mid-episode and full disks never damage saved episodes."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from roboalign_ros.data import DatasetReader, DatasetWriter, DiskFullError, RecordingError, storage
from roboalign_ros.data.synthetic import record_synthetic_episode, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]

RECORD_FOREVER = textwrap.dedent(
    """
    import sys
    from roboalign_ros.data import DatasetWriter
    from roboalign_ros.data.synthetic import record_synthetic_episode, write_synthetic_dataset
    root, mode = sys.argv[1], sys.argv[2]
    writer = write_synthetic_dataset(root, episodes=2, frames=10)
    print("SAVED", flush=True)
    if mode == "mid_episode":
        record_synthetic_episode(writer, 2, 10**9, save=False)  # runs until killed
    else:  # back-to-back short episodes: the kill lands anywhere, saves included
        e = 2
        while True:
            record_synthetic_episode(writer, e, 3)
            e += 1
    """
)


def _start_recorder(root: Path, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(
        [sys.executable, "-c", RECORD_FOREVER, str(root), mode],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "SAVED"
    return proc


def _kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _tmp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*" + storage.TMP_SUFFIX))


def test_kill9_mid_episode_keeps_earlier_episodes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    proc = _start_recorder(root, "mid_episode")
    time.sleep(1.0)  # frames of the third episode are being encoded into temp files
    _kill9(proc)
    assert _tmp_files(root), "expected the killed episode's temp files"
    reader = DatasetReader(root)
    assert len(reader) == 2 and [e.length for e in reader.episodes] == [10, 10]
    for e in range(2):
        assert reader.episode(e).frames["scene"].shape[0] == 10
    writer = DatasetWriter.open(root)  # cleans up and appends
    assert not _tmp_files(root) and writer.num_episodes == 2
    record_synthetic_episode(writer, 2, 4)
    assert [e.length for e in DatasetReader(root).episodes] == [10, 10, 4]


@pytest.mark.parametrize("delay", [0.4, 0.9, 1.3])
def test_kill9_at_random_points_while_saving(tmp_path: Path, delay: float) -> None:
    root = tmp_path / "ds"
    proc = _start_recorder(root, "loop")
    time.sleep(delay)
    _kill9(proc)
    reader = DatasetReader(root)  # whatever the kill interrupted, what is listed is whole
    assert len(reader) >= 2
    for e in range(max(0, len(reader) - 3), len(reader)):  # opening verified all counts
        ep = reader.episode(e)
        assert len(ep.states) == len(ep.frames["wrist"]) == reader.episodes[e].length
    writer = DatasetWriter.open(root)
    assert writer.num_episodes in (len(reader), len(reader) + 1)  # may adopt a committed one
    assert not _tmp_files(root)
    record_synthetic_episode(writer, 99, 3)
    assert len(DatasetReader(root)) == writer.num_episodes


class _FullDisk:
    """Replace `storage.open_for_write` with files that hit ENOSPC after `budget` bytes."""

    def __init__(self, budget: int, only: str = "") -> None:
        self.budget, self.only = budget, only

    def __call__(self, path: Path) -> io.FileIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        disk = self

        class File(io.FileIO):
            def write(self, data: bytes) -> int:  # type: ignore[override]
                if str(path).endswith(disk.only):
                    disk.budget -= len(data)
                    if disk.budget < 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return super().write(data)

        return File(path, "wb")


@pytest.mark.parametrize("budget", [2_000, 60_000, 150_000])
def test_disk_full_stops_recording_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    root = tmp_path / "ds"
    writer = write_synthetic_dataset(root, episodes=2, frames=10)
    info_before = (root / "meta/info.json").read_bytes()
    monkeypatch.setattr(storage, "open_for_write", _FullDisk(budget))
    with pytest.raises(DiskFullError, match="disk full") as err:
        for e in range(2, 50):  # budget runs out while encoding or saving
            record_synthetic_episode(writer, e, 10)
    assert isinstance(err.value, OSError) and "earlier episodes are intact" in str(err.value)
    with pytest.raises(RecordingError, match="writer stopped"):
        writer.start_episode("more")
    monkeypatch.undo()
    saved = writer.num_episodes
    reader = DatasetReader(root)
    assert len(reader) == saved >= 2
    assert (root / "meta/info.json").read_bytes() == info_before or saved > 2
    assert not _tmp_files(root)
    for e in range(saved):
        reader.episode(e)
    record_synthetic_episode(DatasetWriter.open(root), 7, 5)
    assert len(DatasetReader(root)) == saved + 1


def test_disk_full_on_meta_update_is_adopted_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ds"
    writer = write_synthetic_dataset(root, episodes=2, frames=10)
    monkeypatch.setattr(storage, "open_for_write", _FullDisk(0, only="info.json.tmp"))
    with pytest.raises(DiskFullError, match="will adopt it"):
        record_synthetic_episode(writer, 2, 6)
    monkeypatch.undo()
    assert len(DatasetReader(root)) == 2  # info.json still says 2: episode 2 not listed
    assert "interrupted save" in caplog.text
    assert DatasetWriter.open(root).num_episodes == 3
    reader = DatasetReader(root)
    assert [e.length for e in reader.episodes] == [10, 10, 6]
    assert json.loads((root / "meta/info.json").read_text())["total_frames"] == 26


CHILD_ON_TINY_TMPFS = textwrap.dedent(
    """
    import json, sys
    from roboalign_ros.data import DatasetReader, DiskFullError
    from roboalign_ros.data.synthetic import record_synthetic_episode, write_synthetic_dataset
    root = sys.argv[1]
    writer = write_synthetic_dataset(root, episodes=1, frames=10)
    error = None
    try:
        for e in range(1, 10_000):
            record_synthetic_episode(writer, e, 20)
    except DiskFullError as exc:
        error = str(exc)
    reader = DatasetReader(root)
    frames = [len(reader.episode(e).frames["scene"]) for e in range(len(reader))]
    print(json.dumps({"error": error, "saved": writer.num_episodes, "frames": frames}))
    """
)


def test_real_enospc_on_tiny_tmpfs(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    script = (
        f"mount -t tmpfs -o size=400k tmpfs {mnt} || exit 77; "
        f'exec {sys.executable} -c "$0" {mnt}/ds'
    )
    proc = subprocess.run(
        [unshare, "-m", "sh", "-c", script, CHILD_ON_TINY_TMPFS],
        capture_output=True, text=True, env=env, timeout=120,
    )
    if proc.returncode == 77 or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] and "disk full" in result["error"]
    assert result["saved"] >= 1 and result["frames"][0] == 10
    assert result["frames"] == [10] + [20] * (result["saved"] - 1)
