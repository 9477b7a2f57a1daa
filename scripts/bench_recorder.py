#!/usr/bin/env python3
"""Benchmark recorder_node: two 640x480 cameras at 30 fps + joint states at 500 Hz.

A publisher process plays the robot (two synthetic cameras, /joint_states at 500 Hz,
50 Hz joint trajectory commands, a gripper command); recorder_node runs in its own process
and records one episode of ``--seconds`` at 30 fps through its services. Prints frames
recorded and dropped (with reasons), the CPU use of each process (fraction of one core), the
save time and the dataset size (and MB per minute). ``--depth`` adds an aligned 16UC1 depth
stream per camera (stored losslessly), ``--bag`` the rosbag2 (MCAP) of the raw topics:
``--bag-compression zstd|none`` (MCAP chunks), ``--bag-images raw|compressed`` (the camera's
image_transport topics in the bag instead of the raw ones: the publisher then also sends
``<topic>/compressed``, JPEG quality 95, and ``<depth topic>/compressedDepth``, 16-bit PNG level
9, encoded once at its start like its pre-rendered frames, as a camera driver would send them;
``none``: no images in the bag).

    python scripts/bench_recorder.py [--seconds 120] [--fps 30] [--width 640 --height 480]
                                     [--depth] [--bag [--bag-compression zstd|none]
                                     [--bag-images raw|compressed|none]]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CAM_TOPICS = ["/bench/cam0/color/image_raw", "/bench/cam1/color/image_raw"]
DEPTH_TOPICS = ["/bench/cam0/aligned_depth_to_color/image_raw",
                "/bench/cam1/aligned_depth_to_color/image_raw"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compressed(image, encoding: str):
    """A sensor_msgs/CompressedImage as image_transport's compressed (colour: JPEG quality 95)
    or compressedDepth (16UC1: 12-byte header + PNG level 9) plugin sends it."""
    import io
    import struct

    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    buf = io.BytesIO()
    if encoding == "16UC1":
        buf.write(struct.pack("<iff", 1, 0.0, 0.0))  # ConfigHeader: format PNG, no params
        PILImage.fromarray(image).save(buf, format="PNG", compress_level=9)
        return CompressedImage(format="16UC1; compressedDepth png", data=buf.getvalue())
    PILImage.fromarray(image).save(buf, format="JPEG", quality=95)
    return CompressedImage(format="rgb8; jpeg compressed bgr8", data=buf.getvalue())


def peak_rss_kb(pid: int) -> int:
    """Peak resident memory of a process (VmHWM, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def with_children(pid: int) -> list[int]:
    """``pid`` and its child processes (the recorder and its encoder process)."""
    kids = [int(k) for task in Path(f"/proc/{pid}/task").iterdir()
            for k in (task / "children").read_text().split()]
    return [pid, *kids]


def cpu_by_priority(pids: list[int]) -> dict[int, float]:
    """CPU seconds of the processes' threads by nice value (0: the recorder's inputs, spool;
    bag.nice: its bag writer; video.nice: the encoder process)."""
    out: dict[int, float] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended
                continue
            nice = int(fields[16])
            out[nice] = out.get(nice, 0.0) + (int(fields[11]) + int(fields[12])) / \
                os.sysconf("SC_CLK_TCK")
    return out


def publisher(args) -> None:
    """The synthetic robot (runs in its own process)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, JointState
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from roboalign_ros.conversions import numpy_to_image, seconds_to_stamp
    from roboalign_ros.data.synthetic import synthetic_depth, synthetic_image
    from roboalign_ros.nodes.common import COMMAND_QOS, IMAGE_QOS
    from roboalign_ros.robot import load_robot_config

    robot = load_robot_config("sim_arm")
    rclpy.init()
    node = Node("bench_robot")
    cams = [node.create_publisher(type(numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8")),
                                  t, IMAGE_QOS) for t in CAM_TOPICS]
    joints = node.create_publisher(JointState, robot.topics["joint_states"], 10)
    traj = node.create_publisher(JointTrajectory, robot.trajectory_topic, COMMAND_QOS)
    grip = node.create_publisher(Float64MultiArray, robot.gripper_topic, COMMAND_QOS)
    # pre-rendered frames (rendering 640x480 costs more than publishing it)
    frames = [[numpy_to_image(synthetic_image(k, args.height, args.width, seed=c), "rgb8")
               for k in range(0, 90, 3)] for c in range(2)]
    depth_pubs = [node.create_publisher(type(frames[0][0]), t, IMAGE_QOS)
                  for t in DEPTH_TOPICS] if args.depth else []
    depths = [[numpy_to_image(synthetic_depth(k, args.height, args.width, seed=c), "16UC1")
               for k in range(0, 90, 3)] for c in range(2)] if args.depth else []
    # the camera driver's image_transport topics, encoded once (PNG level 9 is slow)
    comp_pubs, comps = [], []
    if args.bag_images == "compressed":
        sources = [(t + "/compressed", [synthetic_image(k, args.height, args.width, seed=c)
                                         for k in range(0, 90, 3)], "rgb8")
                   for c, t in enumerate(CAM_TOPICS)]
        if args.depth:
            sources += [(t + "/compressedDepth", [synthetic_depth(k, args.height, args.width,
                                                                  seed=c)
                                                  for k in range(0, 90, 3)], "16UC1")
                        for c, t in enumerate(DEPTH_TOPICS)]
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            for topic, images, encoding in sources:
                comp_pubs.append(node.create_publisher(CompressedImage, topic, IMAGE_QOS))
                comps.append(list(pool.map(lambda im, e=encoding: compressed(im, e), images)))
    names = list(robot.arm_joints) + list(robot.gripper_joints)
    js = JointState(name=names)
    print("READY", flush=True)
    start = time.time()
    next_img = next_joint = next_cmd = start
    k = 0
    def publish(pub, msg):  # a failed publish (DDS error) is counted, not fatal
        try:
            pub.publish(msg)
        except Exception:  # noqa: BLE001 - rclpy raises RCLError
            sent["publish_errors"] += 1

    # late images and joint-state gaps beyond the recorder's max skew (--max-skew) are frames
    # the publisher did not send in time: counted here so that drops can be told apart
    sent = {"images": 0, "joint_states": 0, "commands": 0, "images_late_10ms": 0,
            "images_late_over_max_skew": 0, "joint_gaps_over_2x_max_skew": 0,
            "publish_errors": 0,
            "image_max_late_ms": 0.0, "joint_max_gap_ms": 0.0}
    last_js, next_report = start, start + 1.0
    while time.time() - start < args.seconds + 30:
        now = time.time()
        if now >= next_report:  # what was really sent, for the driver's report
            next_report += 1.0
            print("STATS " + json.dumps(sent), flush=True)
        if now >= next_joint:
            next_joint += 1 / 500
            seconds_to_stamp(now, js.header.stamp)
            js.position = [0.3 * np.sin(0.5 * now + i) for i in range(6)] + [0.02, 0.02]
            publish(joints, js)
            sent["joint_states"] += 1
            sent["joint_max_gap_ms"] = max(sent["joint_max_gap_ms"], 1e3 * (now - last_js))
            sent["joint_gaps_over_2x_max_skew"] += now - last_js > 2 * args.max_skew
            last_js = now
        if now >= next_cmd:
            next_cmd += 1 / 50
            point = JointTrajectoryPoint(positions=[0.3 * np.sin(0.5 * now + i) for i in range(6)])
            point.time_from_start.nanosec = 40_000_000
            publish(traj, JointTrajectory(joint_names=list(robot.arm_joints), points=[point]))
            if sent["commands"] % 50 == 0:
                publish(grip, Float64MultiArray(data=[robot.gripper_to_joint(0.5)]))
            sent["commands"] += 1
        if now >= next_img:
            late = now - next_img  # stamps are taken now: lateness is camera jitter
            sent["images_late_10ms"] += late > 0.010
            sent["images_late_over_max_skew"] += late > args.max_skew
            sent["image_max_late_ms"] = max(sent["image_max_late_ms"], round(1e3 * late, 1))
            next_img += 1 / args.camera_rate
            for c in range(2):
                msg = frames[c][k % len(frames[c])]
                seconds_to_stamp(now, msg.header.stamp)
                publish(cams[c], msg)
                if depth_pubs:
                    msg = depths[c][k % len(depths[c])]
                    seconds_to_stamp(now, msg.header.stamp)
                    publish(depth_pubs[c], msg)
            for pub, msgs in zip(comp_pubs, comps):
                msg = msgs[k % len(msgs)]
                seconds_to_stamp(now, msg.header.stamp)
                publish(pub, msg)
            sent["images"] += 1
            k += 1
        wait = min(next_img, next_joint, next_cmd) - time.time()
        if wait > 0:
            time.sleep(wait)


def main() -> int:
    """Run the benchmark and print the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--camera-rate", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--max-skew", type=float, default=0.025)
    ap.add_argument("--depth", action="store_true", help="and an aligned depth per camera")
    ap.add_argument("--bag", action="store_true", help="recorder_node bag.enabled (MCAP)")
    ap.add_argument("--bag-compression", default="zstd", choices=["zstd", "none"])
    ap.add_argument("--bag-images", default="raw", choices=["raw", "compressed", "none"])
    ap.add_argument("--bag-no-depth", action="store_true",
                    help="bag.depth false: depth only in the dataset")
    ap.add_argument("--keep", help="write the dataset here instead of a temp dir")
    ap.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if args.publisher:
        publisher(args)
        return 0

    import rclpy
    from rclpy.node import Node

    from roboalign_ros.data import DatasetReader
    from roboalign_ros.srv import GetRecorderStatus, StartEpisode, StopEpisode

    tmp = Path(tempfile.mkdtemp(prefix="bench_recorder_"))
    root = Path(args.keep) if args.keep else tmp / "ds"
    env = dict(os.environ)
    pub = subprocess.Popen([sys.executable, __file__, "--publisher", "--seconds",
                            str(args.seconds), "--camera-rate", str(args.camera_rate),
                            "--width", str(args.width), "--height", str(args.height),
                            "--bag-images", args.bag_images if args.bag else "raw",
                            "--max-skew", str(args.max_skew),
                            *(["--depth"] if args.depth else [])],
                           stdout=subprocess.PIPE, text=True, env=env)
    rec_log = open(tmp / "recorder.log", "w")  # noqa: SIM115
    rec = subprocess.Popen(
        [sys.executable, "-m", "roboalign_ros.nodes.recorder_node", "--ros-args",
         "-p", f"dataset_root:={root}", "-p", f"fps:={args.fps}",
         "-p", f"max_skew:={args.max_skew}", "-p", "cameras:=[cam0,cam1]",
         "-p", f"camera_topics:=[{CAM_TOPICS[0]},{CAM_TOPICS[1]}]",
         *(["-p", "depth_cameras:=[cam0_depth,cam1_depth]",
            "-p", f"depth_topics:=[{DEPTH_TOPICS[0]},{DEPTH_TOPICS[1]}]"] if args.depth else []),
         *(["-p", "bag.enabled:=true", "-p", f"bag.compression:={args.bag_compression}",
            "-p", f"bag.images:={args.bag_images}",
            "-p", f"bag.depth:={str(not args.bag_no_depth).lower()}"] if args.bag else [])],
        stdout=rec_log, stderr=subprocess.STDOUT, env=env)
    rclpy.init()
    node = Node("bench_driver")
    from diagnostic_msgs.msg import DiagnosticArray

    diag: dict[str, str] = {}
    peaks = {"spool_mb": 0.0, "encoder_backlog_frames": 0.0}

    def on_diagnostics(m) -> None:
        diag.update({kv.key: kv.value for s in m.status if "recorder" in s.name
                     for kv in s.values})
        for k in peaks:
            if k in diag:
                peaks[k] = max(peaks[k], float(diag[k]))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    pub_stats: list[dict] = [{}]

    def read_stats():
        for line in pub.stdout:
            if line.startswith("STATS "):
                pub_stats[0] = json.loads(line[6:])

    try:
        assert pub.stdout.readline().strip() == "READY", "publisher failed"
        threading.Thread(target=read_stats, daemon=True).start()
        start_c = node.create_client(StartEpisode, "/recorder_node/start_episode")
        stop_c = node.create_client(StopEpisode, "/recorder_node/stop_episode")
        status_c = node.create_client(GetRecorderStatus, "/recorder_node/get_status")
        assert start_c.wait_for_service(timeout_sec=60), "recorder_node did not come up"

        def call(client, request, timeout=120):
            future = client.call_async(request)
            rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
            assert future.done(), "service call timed out"
            return future.result()

        for _ in range(100):  # until the recorder has seen every stream
            r = call(start_c, StartEpisode.Request(task="bench", source="teleop"))
            if r.success:
                break
            time.sleep(0.2)
        assert r.success, r.message
        recorder = with_children(rec.pid)  # the node and its encoder process
        c0 = {p.pid: cpu_seconds(p.pid) for p in (rec, pub)}
        n0 = cpu_by_priority(recorder)
        sent0 = dict(pub_stats[0])
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        while time.perf_counter() - t0 < args.seconds:
            rclpy.spin_once(node, timeout_sec=0.5)
        sent1 = dict(pub_stats[0])
        wall = time.perf_counter() - t0
        c1 = {p.pid: cpu_seconds(p.pid) for p in (rec, pub)}
        n1 = cpu_by_priority(recorder)
        t_save = time.perf_counter()
        stop = call(stop_c, StopEpisode.Request(save=True, outcome=1))
        stop_s = time.perf_counter() - t_save
        assert stop.success, stop.message
        encoding_messages = []
        while True:  # a stop answered before the encoding finished: saved when it is done
            status = call(status_c, GetRecorderStatus.Request()).status
            if status.episodes_saved > stop.episode_index:
                break
            assert status.state != status.STATE_ERROR, status.message
            if not encoding_messages or time.perf_counter() - encoding_messages[-1][0] > 10:
                encoding_messages.append((time.perf_counter(), status.message))
            time.sleep(0.2)
        save_s = time.perf_counter() - t_save
        c2 = sum(cpu_by_priority(recorder).values())
        ep = DatasetReader(root).episodes[stop.episode_index]
        expected = int(args.seconds * args.fps)
        dropped = stop.message.rsplit("dropped", 1)[-1].strip()
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        bag_bytes = sum(p.stat().st_size for p in (root / "bags").rglob("*") if p.is_file()) \
            if (root / "bags").is_dir() else 0
        result = {
            "seconds": round(wall, 1), "fps": args.fps, "cameras": f"2 x {args.width}x"
            f"{args.height} @ {args.camera_rate} Hz", "joint_states_hz": 500,
            "frames_recorded": ep.length, "frames_expected": expected,
            "dropped": dropped,  # reasons: skew:<stream> = no sample within max_skew
            "recorder_cpu_cores": round((sum(n1.values()) - sum(n0.values())) / wall, 3),
            # by nice value: 0 the inputs and spool, 5 the bag writer, 10 the encoder process
            "recorder_cpu_cores_by_nice": {k: round((v - n0.get(k, 0.0)) / wall, 3)
                                           for k, v in sorted(n1.items())},
            "publisher_cpu_cores": round((c1[pub.pid] - c0[pub.pid]) / wall, 3),
            "machine_cores": os.cpu_count(),
            "recorder_peak_rss_mb": [round(peak_rss_kb(p) / 1e3, 1) for p in recorder],
            "spool_peak_mb": peaks["spool_mb"],
            "encoder_backlog_peak_frames": int(peaks["encoder_backlog_frames"]),
            "loadavg_1min_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "stop_answer_seconds": round(stop_s, 2), "stop_answer": stop.message,
            "status_while_encoding": [m for _, m in encoding_messages[:3]],
            "save_seconds": round(save_s, 2),
            "save_cpu_seconds": round(c2 - sum(n1.values()), 2),
            "depth": args.depth, "bag": args.bag,
            **({"bag_compression": args.bag_compression, "bag_images": args.bag_images,
                "bag_depth": not args.bag_no_depth} if args.bag else {}),
            "dataset_mb": round(size / 1e6, 1),
            "mb_per_minute": round(size / 1e6 / (wall / 60), 1),
            "bag_mb": round(bag_bytes / 1e6, 1),
            "bag_mb_per_minute": round(bag_bytes / 1e6 / (wall / 60), 1),
            "bag_dropped_messages": diag.get("bag_dropped", ""),
            "publisher_during_episode": {
                k: sent1.get(k, 0) - sent0.get(k, 0) for k in (
                    "images", "joint_states", "images_late_10ms", "images_late_over_max_skew",
                    "joint_gaps_over_2x_max_skew", "publish_errors")},
            "publisher_worst": {k: sent1.get(k) for k in ("image_max_late_ms",
                                                          "joint_max_gap_ms")},
            "recorder_received_total": {k: v for k, v in diag.items()
                                        if k.startswith("received.")},
            # receive time - stamp, worst per stream: over the sample delay (0.25 s) drops
            "recorder_input_lag_max_ms": {k.split(".", 1)[1]: float(v) for k, v in diag.items()
                                          if k.startswith("input_lag_max_ms.")},
        }
        print(json.dumps(result, indent=1))
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for p in (rec, pub):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
