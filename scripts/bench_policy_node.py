"""policy_node overhead excluding the model: Image message -> tensor -> ActionChunk message.

Times the node's own per-decision work on a 640x480 rgb8 frame: the zero-copy image view,
the snapshot + observation built for the model, the uint8 HWC -> float CHW tensor a model
preprocessor starts from, and the ActionChunk message built from a 16x7 chunk. Prints p50/p99.

    python scripts/bench_policy_node.py [--iterations 2000]
"""

import argparse
import time

import numpy as np
import torch

from roboalign_ros.conversions import image_to_numpy, numpy_to_action_chunk, numpy_to_image
from roboalign_ros.serving import GateLimits, ObservationGate, PolicyWorker


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    msg = numpy_to_image(frame, "rgb8", stamp=100.0, frame_id="camera_color_optical_frame")
    chunk = rng.normal(size=(16, 7)).astype(np.float32)
    names = [f"joint{i}" for i in range(1, 7)] + ["gripper"]
    worker = PolicyWorker(lambda obs: None, lambda snap: snap,
                          ObservationGate(GateLimits()), lambda d: None, lambda: 100.01)
    worker.set_instruction("pick up the red cube")
    stages = {"image msg -> numpy view": [], "snapshot + gate": [], "numpy -> float tensor": [],
              "chunk -> ActionChunk msg": [], "total": []}
    for i in range(args.iterations):
        t0 = time.perf_counter()
        view = image_to_numpy(msg)
        worker.update_image(view, 100.0)
        worker.update_state(np.zeros(7, np.float32), 100.0 + 1e-3 * (i % 5))
        t1 = time.perf_counter()
        snap = worker._take()
        blocked = worker.gate.check(snap, 100.01)
        assert blocked is None, blocked
        t2 = time.perf_counter()
        tensor = torch.from_numpy(np.ascontiguousarray(snap.image)).permute(2, 0, 1).float()
        tensor.div_(255.0)
        t3 = time.perf_counter()
        numpy_to_action_chunk(chunk, stamp=100.0, dt=0.1, action_space="joint_position",
                              dimension_names=names, sequence=i, instruction=snap.instruction,
                              inference_time=0.05, frame_id="base_link")
        t4 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            stages[key].append(dt * 1e3)
    print(f"policy_node overhead excluding the model, {args.width}x{args.height} rgb8, "
          f"{args.iterations} iterations (ms):")
    for key, values in stages.items():
        v = np.asarray(values[args.iterations // 10:])  # skip warm-up
        print(f"  {key:28s} p50 {np.percentile(v, 50):7.3f}   p99 {np.percentile(v, 99):7.3f}")


if __name__ == "__main__":
    main()
