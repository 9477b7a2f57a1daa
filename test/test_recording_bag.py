"""Episode bags (rosbag2, MCAP) without ROS nodes: pre-roll, events, commit, discard, crash
leftovers."""

import json

from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader
from std_msgs.msg import String

from roboalign_ros.recording.bag import BagRecorder, EpisodeBag, bag_name, typestore

TOPICS = {"/roboalign/instruction": "std_msgs/msg/String",
          "/roboalign/action_chunk": "roboalign_ros/msg/ActionChunk"}


def test_the_package_messages_are_known_to_the_bag_type_store():
    store = typestore()
    text, _ = store.generate_msgdef("roboalign_ros/msg/ActionChunk", ros_version=2)
    assert "uint64 reasoning_sequence" in text and "float32[] actions" in text


S = 1_000_000_000  # ns


def test_a_saved_bag_is_committed_and_a_discarded_one_leaves_nothing(tmp_path):
    rec = BagRecorder(tmp_path, TOPICS, preroll=1.0, events_topic="/recorder/episode_events")
    say = "/roboalign/instruction"
    for t in (0, 2 * S, 2.5 * S):   # before the episode: the last second is kept
        rec.push(say, int(t), serialize_message(String(data=f"pre {t}")))
    rec.start(3, 3 * S, {"event": "start", "grid_start": 3.0})
    for i in range(5):
        rec.push(say, 3 * S + i, serialize_message(String(data=f"m{i}")))
    rec.push("/not/recorded", 4 * S, b"")
    path = rec.stop(save=True, stamp_ns=4 * S, event={"event": "stop", "end": 3.9})
    assert path == tmp_path / "bags" / bag_name(3)
    with Reader(path) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        stamps = [t for _, t, _ in reader.messages()]
    assert counts == {say: 2 + 5, "/roboalign/action_chunk": 0,
                      "/recorder/episode_events": 2}
    assert stamps[:2] == [2 * S, int(2.5 * S)] and stamps == sorted(stamps)
    from mcap_ros2.reader import read_ros2_messages

    events = [json.loads(m.ros_msg.data) for m in read_ros2_messages(
        str(next(path.glob("*.mcap"))), topics=["/recorder/episode_events"])]
    assert events == [{"event": "start", "grid_start": 3.0}, {"event": "stop", "end": 3.9}]
    rec.start(4)
    rec.push("/roboalign/instruction", 30, serialize_message(String(data="x")))
    assert rec.stop(save=False) is None
    rec.close()
    assert sorted(p.name for p in (tmp_path / "bags").iterdir()) == [bag_name(3), "tmp"]
    assert not list((tmp_path / "bags" / "tmp").iterdir())


def test_the_bag_of_an_episode_cut_by_a_crash_is_removed_at_the_next_start(tmp_path):
    bag = EpisodeBag(tmp_path, bag_name(0), TOPICS)
    bag.write("/roboalign/instruction", 1, serialize_message(String(data="half")))
    # the process dies here: no commit, no discard
    assert (tmp_path / "bags" / "tmp" / bag_name(0)).is_dir()
    BagRecorder(tmp_path, TOPICS).close()
    assert not (tmp_path / "bags" / "tmp" / bag_name(0)).exists()
    assert not (tmp_path / "bags" / bag_name(0)).exists()
