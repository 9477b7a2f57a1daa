"""Extra per-frame columns (observation.environment_state, expert.phase) and info metadata."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from roboalign_ros.data import DatasetReader, DatasetWriter
from roboalign_ros.data import lerobot_format as fmt
from roboalign_ros.data import scene_state as ss

NAMES = ["j1", "j2", "gripper"]
EXTRA = {
    "observation.environment_state": {"dtype": "float32", "shape": [4], "names": list("abcd")},
    "expert.phase": {"dtype": "int64", "shape": [1], "names": None},
}


def _frames(w, n, offset=0.0):
    for i in range(n):
        w.add_frame(np.full(3, i, np.float32), np.full(3, -i, np.float32),
                    {"scene": np.full((16, 24, 3), 10 * i, np.uint8)}, timestamp=offset + i / 10,
                    extra={"observation.environment_state": np.arange(4) + i + offset,
                           "expert.phase": i % 3})


def test_extra_columns_round_trip_with_names_stats_and_metadata(tmp_path):
    w = DatasetWriter.create(tmp_path, 10, NAMES, NAMES, {"scene": (16, 24)}, "sim_arm",
                             extra_features=EXTRA, metadata={"sim": {"phases": ["a", "b"]}})
    w.start_episode("pick up the red cube", source="expert")
    _frames(w, 5)
    w.save_episode(success=True)
    w.update_metadata({"note": "x"})
    w.close()

    w = DatasetWriter.open(tmp_path)  # appending keeps features and metadata
    assert w.extra_features == EXTRA and w.metadata["sim"] == {"phases": ["a", "b"]}
    w.start_episode("pick up the red cube", source="expert")
    _frames(w, 3, offset=100.0)
    w.save_episode(success=True)
    w.close()

    info = json.loads((tmp_path / fmt.INFO_PATH).read_text())
    assert info["features"]["observation.environment_state"]["names"] == list("abcd")
    assert info["roboalign"] == {"sim": {"phases": ["a", "b"]}, "note": "x"}
    stats = json.loads((tmp_path / fmt.STATS_PATH).read_text())
    assert stats["expert.phase"]["max"] == [2] and len(stats[ss.ENV_STATE_KEY]["mean"]) == 4
    # LeRobot's storage: vectors as fixed-size lists, shape [1] as a scalar column
    schema = pq.read_schema(tmp_path / "data/chunk-000/file-000.parquet")
    assert schema.field(ss.ENV_STATE_KEY).type == pa.list_(pa.float32(), 4)
    assert schema.field("expert.phase").type == pa.int64()

    r = DatasetReader(tmp_path)
    assert r.extra_features == EXTRA and r.metadata["note"] == "x"
    ep = r.episode(1, decode_video=False)
    np.testing.assert_array_equal(ep.extra["expert.phase"], [0, 1, 2])
    assert ep.extra["expert.phase"].dtype == np.int64
    np.testing.assert_array_equal(ep.extra[ss.ENV_STATE_KEY][2], np.arange(4) + 102.0)


def test_extra_values_are_checked(tmp_path):
    w = DatasetWriter.create(tmp_path, 10, NAMES, NAMES, {"scene": (16, 24)}, "r",
                             extra_features=EXTRA)
    w.start_episode("t")
    img = {"scene": np.zeros((16, 24, 3), np.uint8)}
    good = {"observation.environment_state": np.zeros(4), "expert.phase": 1}
    with pytest.raises(ValueError, match="extra: expected keys"):
        w.add_frame(np.zeros(3), np.zeros(3), img, timestamp=1.0)
    with pytest.raises(ValueError, match="environment_state.*shape"):
        w.add_frame(np.zeros(3), np.zeros(3), img, timestamp=1.0,
                    extra={**good, "observation.environment_state": np.zeros(5)})
    with pytest.raises(ValueError, match="NaN"):
        w.add_frame(np.zeros(3), np.zeros(3), img, timestamp=1.0,
                    extra={**good, "observation.environment_state": np.full(4, np.nan)})
    w.add_frame(np.zeros(3), np.zeros(3), img, timestamp=1.0, extra=good)
    assert w.frames_in_episode == 1
    w.close()


@pytest.mark.parametrize("key,ft,match", [
    ("timestamp", {"dtype": "float32", "shape": [1]}, "reserved"),
    ("observation.state", {"dtype": "float32", "shape": [3]}, "reserved"),
    ("observation.images.x", {"dtype": "float32", "shape": [3]}, "cameras"),
    ("x", {"dtype": "string", "shape": [1]}, "dtype"),
    ("x", {"dtype": "float32", "shape": [2, 2]}, "shape"),
    ("x", {"dtype": "float32", "shape": [2], "names": ["a"]}, "names"),
])
def test_bad_extra_features_are_refused(tmp_path, key, ft, match):
    with pytest.raises(ValueError, match=match):
        DatasetWriter.create(tmp_path, 10, NAMES, NAMES, {"scene": (16, 24)}, "r",
                             extra_features={key: ft})


def test_without_extras_the_layout_is_unchanged(tmp_path):
    w = DatasetWriter.create(tmp_path, 10, NAMES, NAMES, {"scene": (16, 24)}, "r")
    info = json.loads((tmp_path / fmt.INFO_PATH).read_text())
    assert "roboalign" not in info and w.extra_features == {}
    assert set(info["features"]) == {fmt.STATE_KEY, fmt.ACTION_KEY, "observation.images.scene",
                                     *fmt.INDEX_FEATURES}


def test_scene_state_packs_and_unpacks_by_name():
    tool = np.eye(4)
    tool[:3, 3] = [0.3, 0.0, 0.2]
    state = ss.SceneState.from_poses(tool, 0.8, {"red_cube": ([0.4, 0.1, 0.02], 0.5, False),
                                                 "blue_bowl": ([0.3, -0.2, 0.0], 0.0, True)})
    names = ss.environment_state_names(["red_cube", "blue_bowl"])
    vec = state.to_vector()
    assert len(names) == len(vec) == 5 + 2 * 8 and names[5:8] == ["red_cube.x", "red_cube.y",
                                                                 "red_cube.z"]
    back = ss.SceneState.from_vector(names, vec)
    np.testing.assert_allclose(back.objects["red_cube"].offset, [0.1, 0.1, -0.18], atol=1e-6)
    assert back.holding == "blue_bowl" and back.gripper == pytest.approx(0.8)
    with pytest.raises(ValueError, match="lacks"):
        ss.SceneState.from_vector(names[:-1], vec[:-1])
