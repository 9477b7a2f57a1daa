"""Depth storage: size and write speed of the lossless 16-bit codecs, bit-exact check.

Encodes ``--frames`` 640x480 depth maps (mm; a tilted table, a moving box, 2 mm sensor noise
and 1 % holes, as a RealSense gives them) with the dataset's depth encoder (FFV1, 16-bit grey,
mp4) and, for comparison, 16-bit PNG frames in the same container; decodes both and checks
that every value came back. Prints ms per frame, MB per minute at 30 fps and the ratio to raw.

    python scripts/bench_depth.py [--frames 300] [--width 640] [--height 480]
"""

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from roboalign_ros.data.synthetic import synthetic_depth
from roboalign_ros.data.video import VideoEncoder, decode_video


def png_encode(path: Path, frames: np.ndarray, fps: int) -> None:
    """16-bit PNG frames in an mp4 (the alternative to FFV1)."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("png", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], \
            "gray16be"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="gray16le")))
        out.mux(stream.encode(None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=int, default=30)
    a = ap.parse_args()
    frames = np.stack([synthetic_depth(t, a.height, a.width) for t in range(a.frames)])
    raw_mb_min = frames[0].nbytes * a.fps * 60 / 1e6
    print(f"{a.frames} depth frames {a.width}x{a.height} uint16; raw {raw_mb_min:.0f} MB/min "
          f"at {a.fps} fps")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        path = Path(tmp) / "ffv1.mp4"
        t0 = time.perf_counter()
        enc = VideoEncoder(path, a.fps, a.height, a.width, depth=True)
        for f in frames:
            enc.encode(f)
        enc.close()
        rows.append(("ffv1 (the dataset's)", path, time.perf_counter() - t0))
        path = Path(tmp) / "png.mp4"
        t0 = time.perf_counter()
        png_encode(path, frames, a.fps)
        rows.append(("png 16-bit", path, time.perf_counter() - t0))
        print(f"{'codec':<22}{'ms/frame':>10}{'MB/min':>9}{'of raw':>8}{'decode ms':>11}  exact")
        for name, p, seconds in rows:
            t0 = time.perf_counter()
            back = decode_video(p, depth=True)
            dec = time.perf_counter() - t0
            size = p.stat().st_size
            print(f"{name:<22}{seconds / a.frames * 1e3:>10.1f}"
                  f"{size / a.frames * a.fps * 60 / 1e6:>9.1f}"
                  f"{size / frames.nbytes:>8.2f}{dec / a.frames * 1e3:>11.1f}  "
                  f"{np.array_equal(back, frames)}")


if __name__ == "__main__":
    main()
