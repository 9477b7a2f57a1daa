"""Training samples from one or more LeRobot v3 datasets: (observation, action chunk, reasoning).

:class:`FrameSamples` indexes (dataset, episode, frame) triples and decodes episodes lazily
(an LRU of decoded episodes), so only a few episodes' frames are in memory at a time. The
chunk at frame t holds the actions t .. t+horizon-1 (the last action repeated past the end of
the episode, as ``DatasetReader.iter_frames`` does). Reasoning comes from the dataset's
teacher rationales (``meta/rationales.jsonl``, see :mod:`.rationale`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.scene_state import ENV_STATE_KEY as SCENE_STATE
from ..data.scene_state import PHASE_KEY
from ..model.normalization import Normalizer, Stats
from ..model.policy import Observation
from .config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One training example (``chunk`` in robot units, [horizon, action_dim] float32)."""

    observation: Observation
    chunk: np.ndarray
    reasoning: str | None
    key: tuple[int, int, int]  # (dataset index, episode, frame)
    scene_state: np.ndarray | None = None  # observation.environment_state, when recorded


def dataset_gaps(reader) -> list[str]:
    """What a dataset lacks that some stages need, one line each (empty: nothing).

    A dataset that LeRobot recorded, or that its editing tools rewrote, has no metadata block
    of ours (``DatasetInfo`` drops info.json keys it does not know), no teacher rationales and
    no depth; one recorded outside the sim has no environment state.
    """
    from .rationale import RATIONALES_FILE

    gaps = []
    if SCENE_STATE not in reader.extra_features:
        gaps.append(f"no {SCENE_STATE}: the sim teacher (rationale, teacher: sim) and the "
                    "grounding probe (head.localization_weight > 0) need it")
    elif "sim" not in reader.metadata or PHASE_KEY not in reader.extra_features:
        gaps.append(f"no roboalign.sim in meta/info.json or no {PHASE_KEY} column (LeRobot's "
                    "tools drop keys of info.json they do not know): the sim teacher needs "
                    "them; the source dataset of `roboalign record bulk` has them")
    if not (reader.root / "meta" / RATIONALES_FILE).is_file():
        gaps.append(f"no meta/{RATIONALES_FILE}: no teacher reasoning, so SFT learns actions "
                    "only (write it with `roboalign train rationale`)")
    return gaps


def open_datasets(roots) -> list:
    """Open every root with ``DatasetReader``; errors name the root (ConfigError).

    What a dataset lacks (:func:`dataset_gaps`) is logged as a warning naming it.
    """
    from ..data import DatasetReader

    readers = []
    for i, root in enumerate(roots):
        if not Path(root).is_dir():
            raise ConfigError(f"data.roots[{i}]: dataset directory not found: {root}")
        try:
            readers.append(DatasetReader(root))
        except ValueError as exc:
            raise ConfigError(f"data.roots[{i}]: {root} is not a readable dataset: {exc}") from exc
        if len(readers[-1]) == 0:
            raise ConfigError(f"data.roots[{i}]: {root} has no episodes")
        for gap in dataset_gaps(readers[-1]):
            log.warning("data.roots[%d]: %s: %s", i, root, gap)
    return readers


def split_episodes(n: int, val_fraction: float, episodes=()) -> tuple[list[int], list[int]]:
    """(train, val) episode indices: the last ``ceil(val_fraction * n)`` episodes are held out."""
    eps = list(episodes) if episodes else list(range(n))
    bad = [e for e in eps if not 0 <= e < n]
    if bad:
        raise ConfigError(f"data.episodes: {bad} out of range 0..{n - 1}")
    n_val = math.ceil(val_fraction * len(eps)) if val_fraction > 0 else 0
    if n_val >= len(eps):
        raise ConfigError(f"data.val_fraction: {val_fraction} leaves no training episode "
                          f"({len(eps)} episodes)")
    return eps[:len(eps) - n_val], eps[len(eps) - n_val:]


def check_compatible(readers, roots, action_dim: int, state_dim: int, cameras) -> None:
    """Raise ConfigError when a dataset's action/state size or cameras differ from the policy."""
    for i, (r, root) in enumerate(zip(readers, roots)):
        a = len(r.action_names) or r.features["action"]["shape"][0]
        s = len(r.state_names) or r.features["observation.state"]["shape"][0]
        if a != action_dim:
            raise ConfigError(f"data.roots[{i}]: {root} has action_dim {a}, the policy "
                              f"{action_dim}")
        if state_dim and s != state_dim:
            raise ConfigError(f"data.roots[{i}]: {root} has state_dim {s}, the policy {state_dim}")
        missing = [c for c in cameras if c not in r.cameras]
        if missing:
            raise ConfigError(f"data.roots[{i}]: {root} lacks camera(s) {missing} the policy "
                              f"expects (dataset has {list(r.cameras)})")


def episode_chunks(actions: np.ndarray, horizon: int, frames=None) -> np.ndarray:
    """Chunks [len(frames), horizon, D] of one episode's actions (last action repeated)."""
    n = len(actions)
    frames = np.arange(n) if frames is None else np.asarray(frames)
    idx = np.minimum(frames[:, None] + np.arange(horizon)[None], n - 1)
    return actions[idx].astype(np.float32)


def dataset_chunks(readers, horizon: int, episodes_per_reader, stride: int = 1) -> np.ndarray:
    """All chunks (no video decoding), e.g. to fit the FAST tokenizer."""
    out = []
    for r, eps in zip(readers, episodes_per_reader):
        for e in eps:
            ep = r.episode(e, decode_video=False)
            out.append(episode_chunks(ep.actions, horizon, np.arange(0, len(ep), stride)))
    return np.concatenate(out) if out else np.zeros((0, horizon, 1), np.float32)


def dataset_normalizer(readers, mode: str = "quantile") -> Normalizer:
    """Normalizer from the datasets' ``meta/stats.json`` (aggregated over datasets)."""
    from ..data import stats as dstats

    merged = dstats.aggregate([r.stats for r in readers]) if len(readers) > 1 else readers[0].stats
    out = {}
    for key, name in (("action", "action"), ("observation.state", "state")):
        if key not in merged:
            raise ConfigError(f"data: meta/stats.json has no {key!r} statistics")
        s = merged[key]
        out[name] = Stats(mode=mode, q01=np.asarray(s["q01"], np.float64).reshape(-1),
                          q99=np.asarray(s["q99"], np.float64).reshape(-1),
                          mean=np.asarray(s["mean"], np.float64).reshape(-1),
                          std=np.asarray(s["std"], np.float64).reshape(-1))
    return Normalizer(out)


class FrameSamples(torch.utils.data.Dataset):
    """Map-style dataset of :class:`Sample` over one or more datasets.

    Args:
        readers / roots: opened datasets (``open_datasets``) and their paths.
        horizon, cameras, state_dim: the policy's chunk length, camera names, state size.
        episodes_per_reader: episode indices to use per dataset.
        frame_stride: every N-th frame; ``max_samples``: evenly thinned to this many (0 = all).
        reasoning: "latest" (rationale of the latest annotated frame <= t of the episode),
            "exact" (only annotated frames carry reasoning), or "none".
        only_annotated: keep only frames that have a rationale of their own.
        episode_cache: decoded episodes kept in memory.
    """

    def __init__(self, readers, roots, horizon: int, cameras, state_dim: int,
                 episodes_per_reader, frame_stride: int = 1, max_samples: int = 0,
                 reasoning: str = "latest", only_annotated: bool = False,
                 episode_cache: int = 8):
        from .rationale import RationaleStore

        if reasoning not in ("latest", "exact", "none"):
            raise ConfigError(f"reasoning: must be 'latest', 'exact' or 'none', got {reasoning!r}")
        self.readers, self.roots = readers, [str(r) for r in roots]
        self.horizon, self.cameras, self.state_dim = horizon, list(cameras), state_dim
        self.reasoning_mode = reasoning
        self.rationales = [RationaleStore(r).lookup() if reasoning != "none" else {}
                           for r in self.roots]
        items = []
        for d, (r, eps) in enumerate(zip(readers, episodes_per_reader)):
            for e in eps:
                n = r.episodes[e].length
                annotated = {f for f, _ in self.rationales[d].get(e, [])}
                for f in range(0, n, frame_stride):
                    if only_annotated and f not in annotated:
                        continue
                    items.append((d, e, f))
        if only_annotated and not items:
            raise ConfigError("only_annotated: no frame of the selected episodes has a rationale "
                              "(run the rationale stage first)")
        if max_samples and len(items) > max_samples:
            pick = np.unique(np.round(np.linspace(0, len(items) - 1, max_samples)).astype(int))
            items = [items[i] for i in pick]
        if not items:
            raise ConfigError("data: no samples selected")
        self.items = items
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = episode_cache

    def __len__(self) -> int:
        return len(self.items)

    def _episode(self, d: int, e: int):
        key = (d, e)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        ep = self.readers[d].episode(e)
        self._cache[key] = ep
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return ep

    def reasoning_for(self, d: int, e: int, f: int) -> str | None:
        """The rationale used as reasoning target at (dataset, episode, frame)."""
        if self.reasoning_mode == "none":
            return None
        best = None
        for fr, text in self.rationales[d].get(e, []):
            if fr == f or (self.reasoning_mode == "latest" and fr <= f):
                best = text
            if fr >= f:
                break
        return best

    def chunk(self, i: int) -> np.ndarray:
        """Chunk of item ``i`` without decoding video."""
        d, e, f = self.items[i]
        ep = self.readers[d].episode(e, decode_video=False) if (d, e) not in self._cache \
            else self._cache[(d, e)]
        return episode_chunks(ep.actions, self.horizon, [f])[0]

    def __getitem__(self, i: int) -> Sample:
        d, e, f = self.items[i]
        ep = self._episode(d, e)
        images = {c: np.ascontiguousarray(ep.frames[c][f]) for c in self.cameras}
        state = ep.states[f].astype(np.float32) if self.state_dim else None
        obs = Observation(images=images, state=state, instruction=ep.task)
        scene = ep.extra.get(SCENE_STATE)
        return Sample(obs, episode_chunks(ep.actions, self.horizon, [f])[0],
                      self.reasoning_for(d, e, f), (d, e, f),
                      None if scene is None else scene[f].astype(np.float32))


def collate(batch):
    """Keep samples as a list (the policy builds tensors)."""
    return list(batch)


class SeededSampler(torch.utils.data.Sampler):
    """Random permutation per epoch from ``seed + epoch`` (reproducible across a resume).

    The epoch is chosen with :meth:`select_epoch`. (No ``set_epoch``: accelerate would call it
    with its own iteration counter, which restarts at 0 for the loader of a resumed run.)
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def select_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch
