"""Raw topics of each recorded episode as a rosbag2 (MCAP storage), crash-safe (ROS-free).

`recorder_node` (``bag.enabled``) hands every message it hears, already CDR-serialized, to a
:class:`BagRecorder`; one worker thread writes them with ``rosbags``' rosbag2 writer, so a
bag is the standard layout (``metadata.yaml`` + ``<name>.mcap``) that ``ros2 bag`` plays and
``rosbags`` / ``mcap-ros2-support`` read. Like an episode, a bag is written under
``<dataset>/bags/tmp/`` and only moved to ``<dataset>/bags/episode_<index>/`` when the episode
is saved; a discarded episode's bag is deleted, and a crash leaves only a ``tmp/`` entry that
the next start removes (with the episode it belonged to).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

BAGS_DIR = "bags"
TMP_DIR = "tmp"


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
    bytes (``rclpy.serialization.serialize_message``) and a receive time in nanoseconds.
    """

    def __init__(self, dataset_root: str | Path, name: str, topics: dict[str, str], store=None):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.bags = Path(dataset_root) / BAGS_DIR
        self.name = name
        self.tmp = self.bags / TMP_DIR / name
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        store = store or typestore()
        self._writer = Writer(self.tmp, version=9, storage_plugin=StoragePlugin.MCAP)
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
    counts it (``dropped``). ``topics`` maps topic -> type for every bag.
    """

    def __init__(self, dataset_root: str | Path, topics: dict[str, str],
                 queue_size: int = 2000):
        self.root, self.topics = Path(dataset_root), dict(topics)
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

    def start(self, episode_index: int) -> None:
        """Open the bag of episode ``episode_index`` (messages from now on go into it)."""
        self._call("start", bag_name(episode_index))
        self._open = True

    def stop(self, save: bool) -> Path | None:
        """Close the bag: committed with ``save``, else deleted. Returns the committed path."""
        self._open = False
        return self._call("stop", save)

    def push(self, topic: str, stamp_ns: int, data: bytes) -> None:
        """Queue one serialized message (dropped, and counted, when the writer lags)."""
        if not self._open or topic not in self.topics:
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

    def _call(self, *request):
        done = threading.Event()
        box: dict = {}
        self._queue.put((*request, done, box))
        done.wait(60)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _run(self) -> None:
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
                    self._bag = EpisodeBag(self.root, args[0], self.topics, self._store)
                    self.error = None
                elif kind == "stop":
                    bag, self._bag = self._bag, None
                    if bag is not None:
                        box["result"] = bag.commit() if args[0] else bag.discard()
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            done.set()
