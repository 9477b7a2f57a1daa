"""Raw topics of each recorded episode as a rosbag2 (MCAP storage), crash-safe (ROS-free).

`recorder_node` (``bag.enabled``) hands every message it hears, already CDR-serialized, to a
:class:`BagRecorder`; one worker thread writes them with ``rosbags``' rosbag2 writer, so a
bag is the standard layout (``metadata.yaml`` + ``<name>.mcap``) that ``ros2 bag`` plays and
``rosbags`` / ``mcap-ros2-support`` read. Like an episode, a bag is written under
``<dataset>/bags/tmp/`` and only moved to ``<dataset>/bags/episode_<index>/`` when the episode
is saved; a discarded episode's bag is deleted, and a crash leaves only a ``tmp/`` entry that
the next start removes (with the episode it belonged to).

Compression (``compression``): ``zstd`` compresses the MCAP chunks (1 MiB each, zstd level 3;
what ``ros2 bag record --storage-preset-profile zstd_fast`` does, and every MCAP reader
decompresses them), ``none`` writes them as they are. Images take nearly all of a bag's bytes:
``recorder_node``'s ``bag.images: compressed`` records the camera's image_transport topics
(``<topic>/compressed``, ``<topic>/compressedDepth``) instead of the raw ones.

A bag holds everything the recorder used for its frames: each topic's messages of the last
``preroll`` seconds before the start (and always its newest one: a gripper command sent once
before the episode still sets its actions), and an episode-events topic (std_msgs/String,
JSON) with the recorder's frame grid, so that ``roboalign data from-bag`` rebuilds the very
frames the recorder stored.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
from collections import Counter, deque
from pathlib import Path

from .threads import lower_priority

log = logging.getLogger(__name__)

BAGS_DIR = "bags"
TMP_DIR = "tmp"
COMPRESSIONS = ("none", "zstd")


def check_compression(compression: str) -> str:
    """Return ``compression`` if it is one of COMPRESSIONS, else ValueError naming them."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"bag compression: {compression!r} is not one of {list(COMPRESSIONS)}")
    return compression


def bag_name(episode_index: int) -> str:
    """Directory name of an episode's bag (``episode_000007``)."""
    return f"episode_{episode_index:06d}"


def typestore():
    """A rosbags type store that knows the ROS 2 standard messages and this package's own."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from roboalign_ros.robot import package_path

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(Path(package_path("msg")).glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"roboalign_ros/msg/{path.stem}"))
    store.register(types)
    return store


class EpisodeBag:
    """One episode's bag: written under ``bags/tmp/<name>``, committed or discarded whole.

    ``topics`` maps each topic to its type (``sensor_msgs/msg/Image``); ``write`` takes CDR
    bytes (``rclpy.serialization.serialize_message``) and a receive time in nanoseconds;
    ``compression``: see the module docstring.
    """

    def __init__(self, dataset_root: str | Path, name: str, topics: dict[str, str], store=None,
                 compression: str = "zstd"):
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        check_compression(compression)
        self.bags = Path(dataset_root) / BAGS_DIR
        self.name = name
        self.tmp = self.bags / TMP_DIR / name
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        store = store or typestore()
        self._writer = Writer(self.tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        if compression == "zstd":  # MCAP chunk compression ("storage"), not a .zstd file
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        self._connections = {}
        try:
            for topic, msgtype in topics.items():
                self._connections[topic] = self._writer.add_connection(topic, msgtype,
                                                                       typestore=store)
        except BaseException:
            self.discard()
            raise
        self.counts: Counter[str] = Counter()

    def write(self, topic: str, stamp_ns: int, data: bytes) -> None:
        """Append one serialized message of ``topic``."""
        self._writer.write(self._connections[topic], int(stamp_ns), data)
        self.counts[topic] += 1

    def commit(self) -> Path:
        """Close the bag and move it to ``bags/<name>`` (the commit point); returns that path."""
        self._writer.close()
        final = self.bags / self.name
        if final.exists():  # a bag left by an episode index that was discarded later
            shutil.rmtree(final)
        self.tmp.rename(final)
        return final

    def discard(self) -> None:
        """Drop the bag being written (never raises)."""
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - half-written: it goes anyway
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def remove_unfinished(dataset_root: str | Path) -> list[str]:
    """Delete the bags of episodes that never finished (a crash); returns their names."""
    tmp = Path(dataset_root) / BAGS_DIR / TMP_DIR
    names = sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []
    for name in names:
        shutil.rmtree(tmp / name, ignore_errors=True)
    return names


class BagRecorder:
    """Writes episode bags on one thread; :meth:`push` never blocks the caller.

    Messages pushed while no episode is open are ignored; a full queue drops the message and
    counts it (``dropped``). ``topics`` maps topic -> type for every bag; ``nice`` lowers the
    writer thread's CPU priority (compressing raw images costs a third of a core).
    """

    def __init__(self, dataset_root: str | Path, topics: dict[str, str],
                 queue_size: int = 2000, preroll: float = 1.0, events_topic: str = "",
                 compression: str = "zstd", nice: int = 0):
        self.root, self.topics = Path(dataset_root), dict(topics)
        self.compression = check_compression(compression)
        self.nice = nice  # the writer thread's nice increment: the dataset's inputs come first
        self.events_topic = events_topic
        if events_topic:
            self.topics[events_topic] = "std_msgs/msg/String"
        self.preroll_ns = int(preroll * 1e9)
        self._recent: dict[str, deque] = {t: deque() for t in self.topics}
        self._recent_lock = threading.Lock()
        removed = remove_unfinished(self.root)
        if removed:
            log.warning("removed the bags of unfinished episodes: %s", ", ".join(removed))
        self._store = typestore()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._bag: EpisodeBag | None = None
        self._open = False
        self.dropped = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="bag-writer", daemon=True)
        self._thread.start()

    @property
    def recording(self) -> bool:
        """Whether an episode's bag is open."""
        return self._open

    def start(self, episode_index: int, stamp_ns: int = 0, event: dict | None = None) -> None:
        """Open the bag of episode ``episode_index``: the pre-roll, then what comes next.

        ``event`` (JSON-able) is written on the events topic at ``stamp_ns`` after the
        pre-roll (the recorder's start: its frame grid).
        """
        with self._recent_lock:  # nothing pushed meanwhile falls between pre-roll and bag
            preroll = sorted(((t, *m) for t, ms in self._recent.items() for m in ms),
                             key=lambda m: m[1])
            for ms in self._recent.values():
                ms.clear()
            pending = self._request("start", bag_name(episode_index), preroll)
            self._open = True  # from here on push() queues for the bag
        self._wait(*pending)
        if event is not None:
            self.event(stamp_ns, event)

    def event(self, stamp_ns: int, event: dict) -> None:
        """Write ``event`` (JSON) on the events topic of the open bag."""
        if self._open and self.events_topic:
            data = self._store.serialize_cdr(
                self._store.types["std_msgs/msg/String"](data=json.dumps(event)),
                "std_msgs/msg/String")
            self._queue.put(("msg", self.events_topic, stamp_ns, bytes(data)))

    def stop(self, save: bool, stamp_ns: int = 0, event: dict | None = None) -> Path | None:
        """Close the bag: committed with ``save``, else deleted. Returns the committed path.

        ``event`` is written first (the recorder's stop: the last frame time).
        """
        if event is not None:
            self.event(stamp_ns, event)
        self._open = False
        return self._call("stop", save)

    def push(self, topic: str, stamp_ns: int, data: bytes) -> None:
        """Queue one serialized message (dropped, and counted, when the writer lags).

        Between episodes it is kept for the next bag's pre-roll instead.
        """
        if topic not in self.topics:
            return
        if not self._open:
            with self._recent_lock:
                recent = self._recent[topic]
                recent.append((stamp_ns, data))
                while len(recent) > 1 and recent[0][0] < stamp_ns - self.preroll_ns:
                    recent.popleft()
            return
        try:
            self._queue.put_nowait(("msg", topic, stamp_ns, data))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Discard an open bag and stop the thread."""
        if self._open:
            self.stop(save=False)
        self._queue.put(("quit",))
        self._thread.join(10)

    def _request(self, *request) -> tuple[threading.Event, dict]:
        done, box = threading.Event(), {}
        self._queue.put((*request, done, box))
        return done, box

    @staticmethod
    def _wait(done: threading.Event, box: dict):
        done.wait(60)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _call(self, *request):
        return self._wait(*self._request(*request))

    def _run(self) -> None:
        lower_priority(self.nice)
        while True:
            item = self._queue.get()
            kind = item[0]
            if kind == "quit":
                return
            if kind == "msg":
                if self._bag is not None:
                    try:
                        self._bag.write(*item[1:])
                    except Exception as exc:  # noqa: BLE001 - reported, the episode goes on
                        self.error = f"bag: {type(exc).__name__}: {exc}"
                        self.dropped += 1
                continue
            *args, done, box = item[1:]
            try:
                if kind == "start":
                    if self._bag is not None:
                        self._bag.discard()
                    self._bag = EpisodeBag(self.root, args[0], self.topics, self._store,
                                           self.compression)
                    for topic, stamp_ns, data in args[1]:
                        self._bag.write(topic, stamp_ns, data)
                    self.error = None
                elif kind == "stop":
                    bag, self._bag = self._bag, None
                    if bag is not None:
                        box["result"] = bag.commit() if args[0] else bag.discard()
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            done.set()
