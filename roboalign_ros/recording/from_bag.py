"""``roboalign data from-bag``: rosbag2 recordings (MCAP or sqlite3) into a LeRobot v3 dataset.

Labs record bags first and train later. A bag (ours, from ``recorder_node``'s ``bag.enabled``,
or anyone's) is replayed, in time order, into the recorder's own :class:`RecordingSession`
through the recorder's own :class:`MessageFeed`: frames are sampled at a fixed fps with
nearest-stamp pairing and the max skew exactly as live recording does, and skipped frames
are counted by reason. A YAML map (``config/bag_maps/*.yaml``) says which topic is which
input; episodes are split by the recorder's own episode events (its bags: then the frames are
the very ones the recorder stored), by time gaps in the first camera, by a marker topic, or not
at all; the task comes from the events, the instruction topic or ``--task``.

Bad input stops with a clear error and leaves nothing behind: an unreadable or truncated bag,
a mapped topic the bag does not have, a message type that does not fit its role. The dataset
is written under ``<out>.tmp`` and moved into place only when every bag converted.

    roboalign data from-bag BAG [BAG ...] --map config/bag_maps/recorder.yaml --out DATASET
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from roboalign_ros.data import lerobot_format as fmt

from .session import RecordingSession, SessionConfig

ROLES_TYPES = {  # role -> accepted message types
    "camera": ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"),
    "state": ("sensor_msgs/msg/JointState",),
    "joint_trajectory": ("trajectory_msgs/msg/JointTrajectory",),
    "servo": ("geometry_msgs/msg/TwistStamped",),
    "action_chunk": ("roboalign_ros/msg/ActionChunk",),
    "gripper": ("std_msgs/msg/Float64MultiArray",),
    "instruction": ("std_msgs/msg/String",),
}
SPLITS = ("events", "gap", "topic", "none")


class BagError(ValueError):
    """A bag or a map that cannot be converted (the message names what and where)."""


@dataclasses.dataclass
class BagMap:
    """Which topic is which input (config/bag_maps/recorder.yaml documents every field)."""

    robot: str = "sim_arm"
    fps: int = 15
    max_skew: float = 0.05
    cameras: dict = dataclasses.field(default_factory=dict)        # name -> topic
    depth_cameras: dict = dataclasses.field(default_factory=dict)  # name -> topic
    lerobot_depth: bool = False  # also copy depth as LeRobot's own depth features (4.095 m)
    state: str = "/joint_states"
    action_source: str = "joint_trajectory"  # joint_trajectory | servo | action_chunk
    action: str = "/arm_controller/joint_trajectory"
    gripper: str = "/gripper_controller/commands"   # "" when action_source is action_chunk
    instruction: str = "/roboalign/instruction"     # "" : --task only
    split: str = "gap"           # events | gap | topic | none
    gap: float = 1.0             # s without a frame of the first camera: a new episode
    split_topic: str = ""        # split: topic -- each message starts a new episode; events --
    #                              the recorder's episode events (std_msgs/String JSON)

    def validate(self) -> None:
        """Raise BagError naming the first bad field."""
        if not self.cameras or not all(isinstance(t, str) and t for t in self.cameras.values()):
            raise BagError("map: cameras: give at least one camera name -> image topic")
        if self.split not in SPLITS:
            raise BagError(f"map: split: {self.split!r} is not one of {SPLITS}")
        if self.split in ("topic", "events") and not self.split_topic:
            raise BagError(f"map: split: {self.split} needs split_topic")
        if self.action_source not in ("joint_trajectory", "servo", "action_chunk"):
            raise BagError(f"map: action_source: {self.action_source!r}")
        if self.lerobot_depth is not False and (self.lerobot_depth is not True
                                                or not self.depth_cameras):
            raise BagError("map: lerobot_depth: true or false; true needs depth_cameras")
        if not (isinstance(self.fps, int) and self.fps > 0) or not self.max_skew > 0 \
                or not self.gap > 0:
            raise BagError("map: fps, max_skew and gap must be positive")

    def roles(self) -> dict[str, str]:
        """Map every mapped topic to its role."""
        pairs = [(t, "camera") for t in [*self.cameras.values(), *self.depth_cameras.values()]]
        pairs += [(self.state, "state"), (self.action, self.action_source)]
        if self.action_source != "action_chunk" and self.gripper:
            pairs.append((self.gripper, "gripper"))
        if self.instruction:
            pairs.append((self.instruction, "instruction"))
        out: dict[str, str] = {}
        for topic, role in pairs:
            if topic in out:
                raise BagError(f"map: topic {topic} is mapped twice ({out[topic]} and {role})")
            out[topic] = role
        return out


def load_map(path: str | Path) -> BagMap:
    """Read a bag map YAML (unknown keys are errors)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BagError(f"map {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BagError(f"map {path}: expected a mapping")
    fields = {f.name for f in dataclasses.fields(BagMap)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise BagError(f"map {path}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    m = BagMap(**data)
    m.validate()
    return m


@dataclasses.dataclass
class Conversion:
    """What a conversion did."""

    episodes: int = 0
    frames: int = 0
    skipped_frames: Counter = dataclasses.field(default_factory=Counter)  # reason -> count
    skipped_episodes: list = dataclasses.field(default_factory=list)     # (bag, start, why)
    messages: Counter = dataclasses.field(default_factory=Counter)       # topic -> count

    def summary(self) -> str:
        """One paragraph for the console."""
        lines = [f"{self.episodes} episodes, {self.frames} frames"]
        if self.skipped_frames:
            lines.append("frames skipped: " + ", ".join(
                f"{k} {v}" for k, v in sorted(self.skipped_frames.items())))
        for bag, start, why in self.skipped_episodes:
            lines.append(f"episode skipped ({bag} at {start:.2f} s): {why}")
        return "\n".join(lines)


class _ReplayClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _open(bag: Path):
    from rosbags.highlevel import AnyReader

    if not bag.exists():
        raise BagError(f"{bag}: no such bag")
    try:
        reader = AnyReader([bag])
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several kinds
        raise BagError(f"{bag}: not a readable rosbag2 ({type(exc).__name__}: {exc})") from exc
    return reader


def _decoders(conns) -> dict:
    """Connection id -> CDR decoder, from the bag's own message definitions.

    ``mcap-ros2-support`` decodes (it accepts the trailing padding DDS writes, which rosbags'
    strict size check refuses); a bag without definitions (old sqlite3 ones) gets the ROS 2
    standard definitions of its types.
    """
    from mcap.records import Schema
    from mcap_ros2.decoder import DecoderFactory

    from .bag import typestore

    factory, store, out = DecoderFactory(), None, {}
    for cs in conns.values():
        for c in cs:
            text = getattr(c.msgdef, "data", "") or ""
            if not text.strip():
                store = store or typestore()
                try:
                    text = store.generate_msgdef(c.msgtype, ros_version=2)[0]
                except Exception as exc:  # noqa: BLE001
                    raise BagError(f"topic {c.topic}: unknown message type {c.msgtype} and "
                                   "no definition in the bag") from exc
            try:
                out[c.id] = factory.decoder_for("cdr", Schema(c.id, text.encode(), "ros2msg",
                                                              c.msgtype))
            except Exception as exc:  # noqa: BLE001
                raise BagError(f"topic {c.topic}: bad message definition of {c.msgtype} "
                               f"({exc})") from exc
    return out


def _check_topics(bag: Path, reader, m: BagMap) -> dict:
    """The connections of each mapped topic; BagError for missing or ill-typed ones."""
    by_topic: dict[str, list] = {}
    for c in reader.connections:
        by_topic.setdefault(c.topic, []).append(c)
    roles = m.roles()
    optional = {m.instruction, m.gripper} - {""}
    missing = [t for t in roles if t not in by_topic and t not in optional]
    if missing:
        raise BagError(f"{bag}: mapped topic(s) {missing} not in the bag (it has "
                       f"{sorted(by_topic)})")
    for topic, role in roles.items():
        for c in by_topic.get(topic, []):
            if c.msgtype not in ROLES_TYPES[role]:
                raise BagError(f"{bag}: topic {topic} is {c.msgtype}; as {role} it must be "
                               f"{' or '.join(ROLES_TYPES[role])}")
    if m.split in ("topic", "events") and m.split_topic not in by_topic:
        raise BagError(f"{bag}: split_topic {m.split_topic} not in the bag (split: {m.split})")
    wanted = [*roles, *([m.split_topic] if m.split in ("topic", "events") else [])]
    return {t: by_topic[t] for t in wanted if t in by_topic}


def convert(bags: list[Path], m: BagMap, out: Path, task: str = "", progress: bool = True
            ) -> Conversion:
    """Convert ``bags`` into the dataset ``out`` (which must not exist); see the module doc."""
    from roboalign_ros.robot import load_robot_config

    from .feed import MessageFeed

    m.validate()
    out = Path(out)
    if out.exists():
        raise BagError(f"--out {out}: exists; give a new directory")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    robot = load_robot_config(m.robot)
    clock = _ReplayClock()
    session = RecordingSession(SessionConfig(
        root=tmp, fps=m.fps, arm_joints=robot.arm_joints, cameras=list(m.cameras),
        depth_cameras=list(m.depth_cameras), lerobot_depth=m.lerobot_depth,
        robot_type=robot.name,
        action_source=m.action_source, max_skew=m.max_skew, queue_seconds=4.0), clock=clock)
    feed = MessageFeed(session, robot)
    result = Conversion()
    try:
        for bag in bags:
            _convert_bag(Path(bag), m, session, feed, clock, task, result, progress)
        session.close()
        if result.episodes == 0:
            raise BagError("no episode converted: " + (result.summary() or "empty bags"))
        tmp.rename(out)
    except BaseException:
        session.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _convert_bag(bag: Path, m: BagMap, session: RecordingSession, feed, clock, task: str,
                 result: Conversion, progress: bool) -> None:
    from tqdm import tqdm

    reader = _open(bag)
    try:
        m = _compressed_fallback(m, {c.topic for c in reader.connections})
        conns = _check_topics(bag, reader, m)
        if not task and m.split != "events" and \
                not sum(c.msgcount for c in conns.get(m.instruction, [])):
            raise BagError(f"{bag}: no task: the bag has no instruction topic "
                           f"{m.instruction or '(none mapped)'}; give --task")
        roles = m.roles()
        camera_of = {t: n for n, t in [*m.cameras.items(), *m.depth_cameras.items()]}
        first_camera = next(iter(m.cameras.values()))
        start_ns = reader.start_time
        state = {"recording": False, "last_frame": None, "start": 0.0}

        def stop(at: float, end: float | None = None) -> None:
            if not state["recording"]:
                return
            clock.t = max(clock.t, at)
            r = session.stop_episode(save=True, end=end)
            state["recording"] = False
            status = session.status()
            result.skipped_frames.update(status.drops)
            if r.success:
                result.episodes += 1
                result.frames += r.frames
            else:
                result.skipped_episodes.append((bag.name, state["start"] - start_ns * 1e-9,
                                                r.message))

        def begin(at: float, grid_start: float | None = None, name: str = "") -> None:
            clock.t = max(clock.t, at)
            r = session.start_episode(task or name, grid_start=grid_start)
            if r.success:
                state["recording"], state["start"] = True, at
            elif "received yet" not in r.message:  # else: inputs still missing, wait
                raise BagError(f"{bag}: cannot start an episode at {at - start_ns * 1e-9:.2f} s: "
                               f"{r.message}")

        decode = _decoders(conns)
        messages = _messages(bag, reader, [c for cs in conns.values() for c in cs])
        total = sum(c.msgcount for cs in conns.values() for c in cs)
        for conn, t_ns, raw in tqdm(messages, total=total, desc=bag.name, unit="msg",
                                    disable=not progress):
            now = t_ns * 1e-9
            topic = conn.topic
            result.messages[topic] += 1
            try:
                msg = decode[conn.id](bytes(raw))
            except Exception as exc:  # noqa: BLE001
                raise BagError(f"{bag}: message {result.messages[topic]} on {topic} does not "
                               f"deserialize as {conn.msgtype} ({exc})") from exc
            if m.split == "topic" and topic == m.split_topic:
                stop(now)
                begin(now)
                continue
            if m.split == "events" and topic == m.split_topic:
                event = _event(bag, msg)
                if event.get("event") == "start":
                    stop(now)
                    begin(now, event.get("grid_start"), str(event.get("task") or ""))
                elif event.get("event") == "stop":
                    stop(now, event.get("end"))
                continue
            role = roles[topic]
            clock.t = max(clock.t, now)
            try:
                if role == "camera":
                    if topic == first_camera and m.split == "gap":
                        last = state["last_frame"]
                        if last is not None and now - last > m.gap:
                            stop(last + 1.0 / m.fps)
                        state["last_frame"] = now
                    feed.image(camera_of[topic], msg)
                elif role == "state":
                    feed.joint_state(msg)
                elif role == "joint_trajectory":
                    feed.trajectory(msg, now)
                elif role == "servo":
                    feed.twist(msg, now)
                elif role == "action_chunk":
                    feed.chunk(msg, now)
                elif role == "gripper":
                    feed.gripper(msg, now)
                elif role == "instruction":
                    feed.instruction(msg)
            except ValueError as exc:
                result.skipped_frames[f"bad {role} message: {str(exc)[:60]}"] += 1
            if not state["recording"] and m.split in ("gap", "none"):
                begin(now)
            session.tick()
            session.wait_backlog(8)  # let the encoder keep up (no live deadline)
        stop(clock.t + m.max_skew + 1.0 / m.fps)
    finally:
        reader.close()


def _compressed_fallback(m: BagMap, topics: set[str]) -> BagMap:
    """The map with each camera topic the bag lacks replaced by its image_transport topic.

    ``<topic>/compressed`` (colour), ``<topic>/compressedDepth`` (depth), when the bag has it:
    what ``recorder_node`` records with ``bag.images: compressed``.
    """

    def pick(topic: str, suffix: str) -> str:
        return topic + suffix if topic not in topics and topic + suffix in topics else topic

    return dataclasses.replace(
        m, cameras={n: pick(t, "/compressed") for n, t in m.cameras.items()},
        depth_cameras={n: pick(t, "/compressedDepth") for n, t in m.depth_cameras.items()})


def _event(bag: Path, msg) -> dict:
    """One recorder episode event (JSON in a std_msgs/String)."""
    try:
        event = json.loads(msg.data)
    except ValueError as exc:
        raise BagError(f"{bag}: episode event is not JSON: {msg.data[:80]!r}") from exc
    if not isinstance(event, dict):
        raise BagError(f"{bag}: episode event is not a JSON object: {msg.data[:80]!r}")
    return event


def _messages(bag: Path, reader, connections):
    """The bag's messages in time order; a truncated or corrupt file is a BagError."""
    n = 0
    try:
        for item in reader.messages(connections=connections):
            n += 1
            yield item
    except BagError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags / mcap raise several kinds
        raise BagError(f"{bag}: unreadable after {n} messages, truncated or corrupt "
                       f"({type(exc).__name__}: {exc})") from exc


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign data from-bag``; ``func`` converts."""
    ap.add_argument("bags", nargs="+", help="rosbag2 directories (MCAP or sqlite3)")
    ap.add_argument("--map", default=None, help="default: config/bag_maps/recorder.yaml")
    ap.add_argument("--out", required=True, help="new dataset directory")
    ap.add_argument("--task", default="", help="task of every episode (default: the "
                    "instruction topic's latest message)")
    ap.add_argument("--quiet", action="store_true")
    ap.set_defaults(func=run_cli)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``roboalign data from-bag``; exit 0 on success, 2 on bad input."""
    ap = argparse.ArgumentParser(prog="roboalign data from-bag",
                                 description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def run_cli(a: argparse.Namespace) -> int:
    """``roboalign data from-bag`` with parsed options."""
    from roboalign_ros.robot import package_path

    try:
        m = load_map(a.map or package_path("config", "bag_maps", "recorder.yaml"))
        t0 = time.perf_counter()
        result = convert([Path(b) for b in a.bags], m, Path(a.out), a.task, not a.quiet)
    except BagError as exc:
        print(f"roboalign data from-bag: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"wrote {a.out} in {time.perf_counter() - t0:.1f} s "
          f"({fmt.CODEBASE_VERSION}; `DatasetReader('{a.out}')` reads it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
