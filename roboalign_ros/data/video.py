"""Camera streams to mp4 with PyAV: incremental encoding and whole-episode decoding.

Default codec: H.264 (libx264, yuv420p, CRF 23, preset veryfast, GOP 10 frames, no
B-frames): cheap enough to encode two 640x480 streams live on two CPU cores, plays in every
browser (HF hub viewer) and decodes in LeRobot (torchcodec / PyAV). `libsvtav1` (LeRobot's own
default) can be chosen instead when the CPU allows.

Depth streams (16-bit, millimetres) are stored losslessly: FFV1 (intra-only, version 3),
16-bit grey, in Matroska (mp4 cannot hold FFV1 for FFmpeg's remuxer), and decode bit-exact
(`decode_video(path, depth=True)`). Measured against LeRobot 0.6's depth format (x265 lossless,
12-bit grey) on 640x480 frames: FFV1 encodes 3-4x faster (x265's ultrafast preset; 13x its
default preset) at about the same size, and keeps the full 16-bit range.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from . import storage

DEFAULT_CODEC = "libx264"
# encoder name -> (codec name written to info.json, default options)
_CODECS: dict[str, tuple[str, dict[str, str]]] = {
    "libx264": ("h264", {"crf": "23", "preset": "veryfast", "bf": "0"}),
    "libsvtav1": ("av1", {"crf": "30", "preset": "10"}),
    "libx265": ("hevc", {"crf": "26", "preset": "veryfast"}),
}


DEPTH_ENCODER = "ffv1"
# depth encoder -> (pixel format, options). libx265: the opt-in copy LeRobot 0.6 decodes
# (12-bit codes, lossless); ultrafast, since lossless output is the same at any preset and
# scripts/bench_depth.py measured it 3.9x faster than x265's default (640x480 frames)
_DEPTH_ENCODERS = {
    "ffv1": ("gray16le", {"level": "3", "slices": "4"}),
    "libx265": ("gray12le", {"x265-params": "lossless=1:log-level=error", "preset": "ultrafast"}),
}


def codec_name(encoder: str) -> str:
    """Return the codec name recorded in info.json (`video.codec`) for an encoder."""
    if encoder not in _CODECS:
        raise ValueError(f"video codec: unsupported encoder {encoder!r}; choose {sorted(_CODECS)}")
    if encoder not in av.codecs_available:
        raise ValueError(f"video codec: encoder {encoder!r} is not in this PyAV build")
    return _CODECS[encoder][0]


def encoder_for(codec: str) -> str:
    """Return the encoder to append with, given info.json's `video.codec`."""
    for enc, (name, _) in _CODECS.items():
        if name == codec and enc in av.codecs_available:
            return enc
    raise ValueError(f"video codec: no encoder available for {codec!r}")


class VideoEncoder:
    """Encode HxWx3 uint8 RGB frames into an mp4 as they arrive (nothing is buffered).

    Frame i gets pts i in time base 1/fps, so its timestamp is exactly i / fps, which is
    what LeRobot expects (`from_timestamp + timestamp`). The file is written through
    `storage.open_for_write` and fsynced on `close`.
    """

    def __init__(
        self,
        path: Path,
        fps: int,
        height: int,
        width: int,
        encoder: str = DEFAULT_CODEC,
        gop: int = 10,
        crf: int | None = None,
        threads: int = 1,
        depth: bool = False,
        container: str = "mp4",
        depth_encoder: str = DEPTH_ENCODER,
    ) -> None:
        if depth:
            if depth_encoder not in _DEPTH_ENCODERS:
                raise ValueError(f"depth_encoder: {depth_encoder!r} is not one of "
                                 f"{sorted(_DEPTH_ENCODERS)}")
            encoder = depth_encoder
            self._pix_fmt, depth_opts = _DEPTH_ENCODERS[encoder]
        else:
            codec_name(encoder)
            self._pix_fmt = "rgb24"
        self.path = Path(path)
        self.height, self.width = height, width
        self.depth = depth
        self.frames = 0
        self._file = storage.open_for_write(self.path)
        try:
            self._container = av.open(self._file, mode="w", format=container)
            stream = self._container.add_stream(encoder, rate=Fraction(fps))
            stream.width, stream.height = width, height
            stream.pix_fmt = self._pix_fmt if depth else "yuv420p"
            stream.time_base = Fraction(1, fps)
            if depth:
                opts = dict(depth_opts, **({"g": str(gop)} if encoder != "ffv1" else {}))
            else:
                opts = dict(_CODECS[encoder][1], g=str(gop))
            if crf is not None and not depth:
                opts["crf"] = str(crf)
            stream.options = opts
            stream.codec_context.thread_count = threads
            self._stream = stream
        except BaseException:
            self._file.close()
            raise

    def encode(self, rgb: np.ndarray) -> None:
        """Encode one frame (HxWx3 uint8, RGB; a depth stream: HxW uint16)."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format=self._pix_fmt)
        frame.pts = self.frames
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, write the mp4 index and fsync the file."""
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        except BaseException:
            self._file.close()
            raise
        storage.close_synced(self._file)

    def abort(self) -> None:
        """Drop the file being written (best effort, never raises)."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the stream may be half written
            pass
        try:
            self._file.close()
        except Exception:  # noqa: BLE001
            pass
        storage.remove_quietly(self.path)


def probe_frame_count(path: Path) -> int:
    """Count the video frames of an mp4 from its index (cheap; demuxes when unknown)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.demux(stream) if _.size)


def _depth_array(frame: av.VideoFrame) -> np.ndarray:
    """A depth frame's values as stored.

    16-bit grey as is; LeRobot's 12-bit codes unscaled (a conversion to 16 bits would
    multiply them by 16).
    """
    name = frame.format.name
    return frame.to_ndarray(format=name if name in ("gray12le", "gray16le") else "gray16le")


def iter_video(path: Path, depth: bool = False, start: int = 0,
               count: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of an mp4 one by one as HxWx3 uint8 RGB arrays (streaming).

    ``depth``: a depth stream, as HxW uint16 arrays. ``start`` / ``count``: only the frames
    ``start .. start + count`` (an episode in a file that holds several, as LeRobot writes
    them); it seeks to the keyframe before ``start`` and decodes from there.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        first_pts = stream.start_time or 0
        if start > 0:
            container.seek(first_pts + int(start / rate / stream.time_base), stream=stream,
                           backward=True)
        n = 0
        for frame in container.decode(stream):
            if count is not None and n >= count:
                return
            if start > 0 and frame.pts is not None:
                index = round(float((frame.pts - first_pts) * stream.time_base * rate))
                if index < start:
                    continue
            yield _depth_array(frame) if depth else frame.to_ndarray(format="rgb24")
            n += 1


def decode_video(path: Path, depth: bool = False, start: int = 0,
                 count: int | None = None) -> np.ndarray:
    """Decode the frames of an mp4 into a (frames, H, W, 3) uint8 RGB array.

    ``depth``: a depth stream, as a (frames, H, W) uint16 array, bit-exact. ``start`` /
    ``count``: only those frames (see :func:`iter_video`).
    """
    if start or count is not None:
        frames = list(iter_video(path, depth, start, count))
        if not frames:
            raise ValueError(f"no frames from {start} on")
        return np.stack(frames)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        shape = (stream.height, stream.width) if depth else (stream.height, stream.width, 3)
        out = np.empty((int(stream.frames), *shape), np.uint16 if depth else np.uint8)
        extra = []
        n = 0
        for frame in container.decode(stream):
            rgb = _depth_array(frame) if depth else frame.to_ndarray(format="rgb24")
            if n < len(out):
                out[n] = rgb
            else:
                extra.append(rgb)
            n += 1
    return np.concatenate([out[:n], np.stack(extra)]) if extra else out[:n]
