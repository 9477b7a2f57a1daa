"""Action tokenizers: FAST (DCT + quantization + BPE) and a uniform-binning fallback.

Both work on *normalized* chunks (float [horizon, action_dim], roughly in [-1, 1]; values are
clipped to ``[-clip, clip]`` first) and produce *local* token indices ``0..vocab_size-1``; the
policy maps index ``i`` to the MLLM token ``<ACT_i>``. ``decode`` never raises: a malformed
sequence (unknown ids, wrong length) is repaired (dropped / zero-padded / truncated) and each
repair is reported in ``DecodeResult.problems``.

Round-trip error bounds (max abs error in normalized units, for inputs with ``|x| <= clip``):

* FAST: each DCT coefficient is rounded to a multiple of ``1/scale``, so its error is at most
  ``1/(2*scale)``. The orthonormal inverse DCT maps the per-dimension coefficient error vector
  ``e`` to ``C^T e``; hence ``|err_t| <= max_t sum_k |C_kt| / (2*scale) <= sqrt(H) / (2*scale)``
  (Cauchy-Schwarz on the unit-norm column of C). ``error_bound()`` returns the exact middle
  term (e.g. 0.148 for H=10, scale=10; the typical RMS error is ``1/(scale*sqrt(12))``).
  The integer alphabet covers ``|round(scale*c)| <= ceil(sqrt(H)*clip*scale)``, which bounds
  every coefficient of a clipped chunk, so no coefficient is ever saturated.
* Binning: half a bin, ``clip / n_bins``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer, models, trainers

from .config import CheckpointError

TOKENIZER_CONFIG_NAME = "action_tokenizer.json"
BPE_NAME = "tokenizer.json"
_CHAR_BASE = 0x100  # quantized integers are mapped to chr(_CHAR_BASE + q + R): no controls/spaces


@dataclass
class DecodeResult:
    """A decoded chunk (normalized units, float32 [H, D]) and the repairs that were needed."""

    chunk: np.ndarray
    problems: list[str] = field(default_factory=list)


class ActionTokenizer:
    """Common interface; use :func:`load_action_tokenizer` to read a saved one."""

    kind = ""

    def __init__(self, horizon: int, action_dim: int, clip: float = 1.0):
        if horizon < 1 or action_dim < 1 or clip <= 0:
            raise ValueError(f"bad action tokenizer shape/clip: {horizon}, {action_dim}, {clip}")
        self.horizon, self.action_dim, self.clip = int(horizon), int(action_dim), float(clip)

    @property
    def vocab_size(self) -> int:
        """Number of distinct action tokens."""
        raise NotImplementedError

    def fit(self, chunks: np.ndarray) -> ActionTokenizer:
        """Fit on normalized chunks [N, H, D] (no-op for binning)."""
        return self

    def encode(self, chunk: np.ndarray) -> list[int]:
        """Normalized chunk [H, D] -> local token indices."""
        raise NotImplementedError

    def decode(self, ids) -> DecodeResult:
        """Local token indices -> normalized chunk; never raises on malformed input."""
        raise NotImplementedError

    def error_bound(self) -> float:
        """Worst-case max abs round-trip error (normalized units) for ``|x| <= clip``."""
        raise NotImplementedError

    def _config(self) -> dict:
        return {"kind": self.kind, "horizon": self.horizon, "action_dim": self.action_dim,
                "clip": self.clip}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``action_tokenizer.json`` (+ ``tokenizer.json`` for FAST) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_CONFIG_NAME).write_text(json.dumps(self._config(), indent=2))

    @staticmethod
    def from_pretrained(directory: str | Path) -> ActionTokenizer:
        """Alias of :func:`load_action_tokenizer`."""
        return load_action_tokenizer(directory)

    def _check_chunk(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape != (self.horizon, self.action_dim):
            raise ValueError(
                f"chunk shape {chunk.shape} != (horizon, action_dim) "
                f"{(self.horizon, self.action_dim)}"
            )
        if not np.all(np.isfinite(chunk)):
            raise ValueError("chunk contains NaN or inf")
        return np.clip(chunk, -self.clip, self.clip)

    def _fit_length(self, values: list[float], fill: float, problems: list[str]) -> np.ndarray:
        n, want = len(values), self.horizon * self.action_dim
        if n < want:
            problems.append(f"got {n} action values, expected {want}: padded with {fill}")
            values = list(values) + [fill] * (want - n)
        elif n > want:
            problems.append(f"got {n} action values, expected {want}: truncated")
            values = values[:want]
        return np.asarray(values, dtype=np.float64).reshape(self.horizon, self.action_dim)


class FastActionTokenizer(ActionTokenizer):
    """FAST: per-dimension orthonormal DCT over time, ``round(scale * coeff)``, then BPE.

    Coefficients are flattened frequency-major (all dimensions' DC terms first), so a token
    prefix carries the coarse shape of the chunk.
    """

    kind = "fast"

    def __init__(self, horizon: int, action_dim: int, scale: float = 10.0, clip: float = 1.0,
                 bpe_vocab_size: int = 1024, bpe: Tokenizer | None = None):
        super().__init__(horizon, action_dim, clip)
        if scale <= 0:
            raise ValueError(f"FAST scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.radius = math.ceil(math.sqrt(horizon) * self.clip * self.scale)
        if _CHAR_BASE + 2 * self.radius >= 0xD800:
            raise ValueError("FAST scale * clip * sqrt(horizon) too large for the unicode alphabet")
        self.bpe_vocab_size = max(int(bpe_vocab_size), self.alphabet_size)
        self.bpe = bpe if bpe is not None else self._alphabet_only()

    @property
    def alphabet_size(self) -> int:
        """Number of distinct quantized coefficient values."""
        return 2 * self.radius + 1

    @property
    def vocab_size(self) -> int:  # noqa: D102
        return self.bpe.get_vocab_size()

    def _alphabet(self) -> list[str]:
        return [chr(_CHAR_BASE + i) for i in range(self.alphabet_size)]

    def _alphabet_only(self) -> Tokenizer:
        vocab = {c: i for i, c in enumerate(self._alphabet())}
        return Tokenizer(models.BPE(vocab=vocab, merges=[]))

    def _to_string(self, chunk: np.ndarray) -> str:
        coeffs = dct(self._check_chunk(chunk), axis=0, norm="ortho")
        q = np.clip(np.rint(coeffs * self.scale), -self.radius, self.radius).astype(np.int64)
        return "".join(chr(_CHAR_BASE + self.radius + v) for v in q.reshape(-1))

    def fit(self, chunks: np.ndarray) -> FastActionTokenizer:
        """Train the BPE merges on normalized chunks [N, H, D]."""
        chunks = np.asarray(chunks)
        if chunks.ndim != 3 or chunks.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"chunks must be [N, {self.horizon}, {self.action_dim}], got "
                             f"{chunks.shape}")
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=self.bpe_vocab_size, min_frequency=2, show_progress=False,
            initial_alphabet=self._alphabet(), limit_alphabet=self.alphabet_size,
        )
        bpe.train_from_iterator((self._to_string(c) for c in chunks), trainer=trainer)
        self.bpe = bpe
        return self

    def encode(self, chunk: np.ndarray) -> list[int]:  # noqa: D102
        return self.bpe.encode(self._to_string(chunk)).ids

    def decode(self, ids) -> DecodeResult:  # noqa: D102
        problems: list[str] = []
        values: list[float] = []
        for i in _as_int_list(ids, problems):
            piece = self.bpe.id_to_token(i) if 0 <= i < self.vocab_size else None
            if piece is None:
                problems.append(f"unknown action token {i}: dropped")
                continue
            for ch in piece:
                v = ord(ch) - _CHAR_BASE - self.radius
                if abs(v) > self.radius:
                    problems.append(f"bad symbol {ch!r} in token {i}: dropped")
                    continue
                values.append(v / self.scale)
        coeffs = self._fit_length(values, 0.0, problems)
        chunk = idct(coeffs, axis=0, norm="ortho")
        return DecodeResult(chunk.astype(np.float32), problems)

    def error_bound(self) -> float:  # noqa: D102
        basis = dct(np.eye(self.horizon), axis=0, norm="ortho")  # rows k, columns t
        return float(np.abs(basis).sum(axis=0).max() / (2 * self.scale))

    def _config(self) -> dict:
        return {**super()._config(), "scale": self.scale, "bpe_vocab_size": self.bpe_vocab_size}

    def save_pretrained(self, directory: str | Path) -> None:  # noqa: D102
        super().save_pretrained(directory)
        self.bpe.save(str(Path(directory) / BPE_NAME))


class BinningActionTokenizer(ActionTokenizer):
    """One token per value: ``n_bins`` uniform bins over ``[-clip, clip]``, time-major order."""

    kind = "binning"

    def __init__(self, horizon: int, action_dim: int, n_bins: int = 256, clip: float = 1.0):
        super().__init__(horizon, action_dim, clip)
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.n_bins = int(n_bins)

    @property
    def vocab_size(self) -> int:  # noqa: D102
        return self.n_bins

    @property
    def _width(self) -> float:
        return 2 * self.clip / self.n_bins

    def encode(self, chunk: np.ndarray) -> list[int]:  # noqa: D102
        x = self._check_chunk(chunk).reshape(-1)
        idx = np.floor((x + self.clip) / self._width).astype(np.int64)
        return np.clip(idx, 0, self.n_bins - 1).tolist()

    def decode(self, ids) -> DecodeResult:  # noqa: D102
        problems: list[str] = []
        values = []
        for i in _as_int_list(ids, problems):
            if 0 <= i < self.n_bins:
                values.append(-self.clip + (i + 0.5) * self._width)
            else:
                problems.append(f"unknown action token {i}: dropped")
        return DecodeResult(self._fit_length(values, 0.0, problems).astype(np.float32), problems)

    def error_bound(self) -> float:  # noqa: D102
        return self._width / 2

    def _config(self) -> dict:
        return {**super()._config(), "n_bins": self.n_bins}


def _as_int_list(ids, problems: list[str]) -> list[int]:
    try:
        return [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
    except (TypeError, ValueError, OverflowError):
        problems.append(f"action ids are not integers: {type(ids).__name__}")
        return []


def load_action_tokenizer(directory: str | Path) -> ActionTokenizer:
    """Read a tokenizer saved with ``save_pretrained``; bad/missing files raise CheckpointError."""
    directory = Path(directory)
    path = directory / TOKENIZER_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"missing action tokenizer config: {path}")
    try:
        cfg = json.loads(path.read_text())
        kind = cfg.pop("kind")
        if kind == "binning":
            return BinningActionTokenizer(**cfg)
        if kind != "fast":
            raise ValueError(f"unknown kind {kind!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"bad action tokenizer config {path}: {exc!r}") from exc
    bpe_path = directory / BPE_NAME
    if not bpe_path.is_file():
        raise CheckpointError(f"missing FAST BPE file: {bpe_path}")
    try:
        bpe = Tokenizer.from_file(str(bpe_path))
    except Exception as exc:  # tokenizers raises a plain Exception on parse errors
        raise CheckpointError(f"bad FAST BPE file {bpe_path}: {exc}") from exc
    return FastActionTokenizer(bpe=bpe, **cfg)
