"""`roboalign data from-bag`: bags (MCAP and sqlite3) into datasets through the recorder's own
sampler; bad bags and maps refused with their names, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin

from roboalign_ros.apps.synthetic_bag import DEPTH, H, W, joints, write_bag
from roboalign_ros.data import DatasetReader
from roboalign_ros.data.synthetic import synthetic_image
from roboalign_ros.recording import from_bag as fb


def test_a_bag_with_a_pause_becomes_two_episodes_sampled_like_the_recorder(tmp_path):
    bag = tmp_path / "bag"
    frames = write_bag(bag, [(0.0, 2.0), (4.0, 1.5)])
    out = tmp_path / "ds"
    result = fb.convert([bag], gap_map(), out, progress=False)
    assert result.episodes == 2, result.summary()
    reader = DatasetReader(out)
    assert len(reader) == 2 and reader.fps == 15
    stamps = np.array([t for t, _ in frames])
    for e, seconds in ((0, 2.0), (1, 1.5)):
        ep = reader.episode(e)
        assert ep.task == "pick up the red cube"
        # the whole segment but the recorder's margins at both ends (~0.3 s)
        assert seconds * 15 - 6 <= len(ep) <= seconds * 15 + 1, len(ep)
        np.testing.assert_allclose(np.diff(ep.capture_times), 1 / 15, atol=1e-6)
        for i, t in enumerate(ep.capture_times):
            k = frames[int(np.argmin(np.abs(stamps - t)))][1]   # nearest published frame
            diff = np.abs(ep.frames["scene"][i].astype(int) - synthetic_image(k, H, W))
            assert diff.mean() < 3.0
            # the stored state is the joint state published nearest the frame time
            q = joints(round(t * 100) / 100)
            np.testing.assert_allclose(ep.states[i][:6], q[:6], atol=1e-6)
            assert ep.actions[i][6] == pytest.approx(0.7, abs=1e-6)
    assert result.messages["/camera/camera/color/image_raw"] == len(frames)


def test_compressed_image_topics_in_zstd_chunks_convert(tmp_path):
    """A bag of image_transport's compressed topics (what recorder_node's bag.images:
    compressed records): the map's raw topics fall back to them; depth stays bit-exact."""
    from mcap.reader import make_reader

    from roboalign_ros.data.synthetic import synthetic_depth

    bag = tmp_path / "bag"
    frames = write_bag(bag, [(0.0, 2.0)], compressed_images=True)
    with open(next(bag.glob("*.mcap")), "rb") as f:
        chunks = list(make_reader(f).get_summary().chunk_indexes)
    assert chunks and {c.compression for c in chunks} == {"zstd"}
    m = gap_map()
    m.depth_cameras = {"scene_depth": DEPTH}
    result = fb.convert([bag], m, tmp_path / "ds", progress=False)
    assert result.episodes == 1 and not result.skipped_frames, result.summary()
    ep = DatasetReader(tmp_path / "ds").episode(0, depth=True)
    stamps = np.array([t for t, _ in frames])
    assert len(ep) >= 24
    for i, t in enumerate(ep.capture_times):
        k = frames[int(np.argmin(np.abs(stamps - t)))][1]
        np.testing.assert_array_equal(ep.depth["scene_depth"][i], synthetic_depth(k, H, W))
        diff = np.abs(ep.frames["scene"][i].astype(int) - synthetic_image(k, H, W))
        assert diff.mean() < 3.0  # JPEG 95 then H.264
    # a depth format this converter cannot decode is named in what was skipped
    write_bag(tmp_path / "rvl", [(0.0, 1.0)], compressed_images=True, depth_format="rvl")
    with pytest.raises(fb.BagError, match="(?s)no episode converted.*compressedDepth rvl"):
        fb.convert([tmp_path / "rvl"], m, tmp_path / "x", progress=False)


def test_sqlite3_bags_convert_too_and_task_comes_from_the_command_line(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, [(0.0, 1.5)], storage=StoragePlugin.SQLITE3, instruction=False)
    with pytest.raises(fb.BagError, match="no task"):
        fb.convert([bag], gap_map(), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.tmp").exists()
    result = fb.convert([bag], gap_map(), tmp_path / "b", task="open the drawer",
                        progress=False)
    assert result.episodes == 1
    assert DatasetReader(tmp_path / "b").episode(0, False).task == "open the drawer"


def test_bad_bags_and_maps_are_named_and_nothing_is_written(tmp_path, capsys):
    bag = tmp_path / "bag"
    write_bag(bag, [(0.0, 1.5)])
    m = gap_map()
    # a mapped topic the bag lacks
    m.depth_cameras = {"scene_depth": "/camera/camera/aligned_depth_to_color/image_raw"}
    with pytest.raises(fb.BagError, match="aligned_depth_to_color.*not in the bag"):
        fb.convert([bag], m, tmp_path / "x", progress=False)
    # a topic of the wrong type for its role
    m = gap_map()
    m.state, m.instruction = "/roboalign/instruction", ""
    with pytest.raises(fb.BagError, match="as state it must be sensor_msgs/msg/JointState"):
        fb.convert([bag], m, tmp_path / "x", task="go", progress=False)
    m.instruction = "/roboalign/instruction"
    with pytest.raises(fb.BagError, match="mapped twice"):
        fb.convert([bag], m, tmp_path / "x", progress=False)
    # a truncated file
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])
    with pytest.raises(fb.BagError, match="truncated or corrupt|not a readable rosbag2"):
        fb.convert([bag], gap_map(), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
    # not a bag; an unknown map key; the CLI says which, exit 2
    assert fb.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "no such bag" in capsys.readouterr().err
    bad = tmp_path / "map.yaml"
    bad.write_text("cameras: {scene: /c}\nfps: 15\nspeed: 3\n")
    with pytest.raises(fb.BagError, match="unknown key.*speed"):
        fb.load_map(bad)


def fb_map() -> Path:
    from roboalign_ros.robot import package_path

    return package_path("config", "bag_maps", "recorder.yaml")


def gap_map() -> fb.BagMap:
    """The shipped map, splitting by camera pauses (these bags have no recorder events)."""
    m = fb.load_map(fb_map())
    m.split = "gap"
    return m
