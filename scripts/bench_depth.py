"""Depth storage: size and write speed of lossless depth codecs, bit-exact check.

Encodes ``--frames`` 640x480 depth maps (mm; a tilted table, a moving box, 2 mm sensor noise
and 1 % holes, as a RealSense gives them) with the dataset's depth encoder (FFV1, 16-bit grey,
Matroska) and, for comparison, 16-bit PNG frames, and LeRobot 0.6's own depth format: x265
lossless, 12-bit grey, here with linear 1 mm codes (so exact up to 4.095 m; LeRobot's default
is log-quantized, not exact), at LeRobot's preset and at ``ultrafast``. Decodes each and checks
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


def decode16(path: Path) -> np.ndarray:
    return decode_video(path, depth=True)


def png_encode(path: Path, frames: np.ndarray, fps: int) -> None:
    """16-bit PNG frames in an mp4 (the alternative to FFV1)."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("png", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], \
            "gray16be"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="gray16le")))
        out.mux(stream.encode(None))


def x265_encode(path: Path, frames: np.ndarray, fps: int, preset: str | None) -> None:
    """LeRobot 0.6's depth encoding (DepthEncoderConfig: hevc, gray12le, lossless=1)."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx265", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], \
            "gray12le"
        stream.options = {"x265-params": "lossless=1:log-level=error",
                          **({"preset": preset} if preset else {})}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.minimum(f, 4095),
                                                             format="gray12le")))
        out.mux(stream.encode(None))


def decode_codes(path: Path) -> np.ndarray:
    """12-bit codes as stored (no rescaling to 16 bits)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="gray12le") for f in c.decode(video=0)])


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
        path = Path(tmp) / "ffv1.mkv"
        t0 = time.perf_counter()
        enc = VideoEncoder(path, a.fps, a.height, a.width, depth=True, container="matroska")
        for f in frames:
            enc.encode(f)
        enc.close()
        rows.append(("ffv1 (the dataset's)", path, time.perf_counter() - t0, decode16))
        path = Path(tmp) / "png.mp4"
        t0 = time.perf_counter()
        png_encode(path, frames, a.fps)
        rows.append(("png 16-bit", path, time.perf_counter() - t0, decode16))
        for preset in (None, "ultrafast"):
            path = Path(tmp) / f"x265_{preset}.mp4"
            t0 = time.perf_counter()
            x265_encode(path, frames, a.fps, preset)
            rows.append((f"x265 12-bit {preset or 'LeRobot'}", path, time.perf_counter() - t0,
                         decode_codes))
        print(f"{'codec':<22}{'ms/frame':>10}{'MB/min':>9}{'of raw':>8}{'decode ms':>11}  exact")
        for name, p, seconds, decode in rows:
            t0 = time.perf_counter()
            back = decode(p)
            dec = time.perf_counter() - t0
            size = p.stat().st_size
            print(f"{name:<22}{seconds / a.frames * 1e3:>10.1f}"
                  f"{size / a.frames * a.fps * 60 / 1e6:>9.1f}"
                  f"{size / frames.nbytes:>8.2f}{dec / a.frames * 1e3:>11.1f}  "
                  f"{np.array_equal(back, frames)}")


if __name__ == "__main__":
    main()
