"""Where are the objects? A training-only probe that asks the backbone's feature layer.

Spatial-softmax keypoints over each camera's image tokens (``model.head.keypoints_from_features``)
and a small MLP regress the objects' base-frame x, y of ``observation.environment_state``
(standardized by its dataset statistics). The ``sft`` stage adds it to its loss
(``localization_weight``) and the ``ground`` stage trains the backbone on it alone, on scenes
the sim renders. It is what a from-scratch vision tower lacks: the action and reasoning losses
say where objects are only through a few tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.scene_state import ENV_STATE_KEY
from .config import ConfigError


def object_position_columns(names) -> list[int]:
    """Indices of the objects' ``.x`` / ``.y`` in an environment-state name list."""
    return [i for i, n in enumerate(names)
            if n.endswith((".x", ".y")) and not n.startswith("tool.")]


class LocalizationProbe(torch.nn.Module):
    """Training-only probe: feature-layer image tokens -> objects' (x, y) (standardized).

    ``columns``: indices into ``observation.environment_state``; ``mean`` / ``std``: their
    dataset statistics. See ``SFTConfig.localization_weight``.
    """

    def __init__(self, hidden: int, keypoints: int, cameras: int, columns, mean, std):
        super().__init__()
        self.logits = torch.nn.Sequential(torch.nn.LayerNorm(hidden),
                                          torch.nn.Linear(hidden, 3 * keypoints))
        self.out = torch.nn.Sequential(torch.nn.Linear(2 * keypoints * cameras, 256),
                                       torch.nn.GELU(), torch.nn.Linear(256, len(columns)))
        self.columns = list(columns)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-3))

    def forward(self, hidden, token_grid, mask, scores=None):
        """Standardized predictions [B, columns] from feature-layer hidden states.

        ``scores``: ``self.logits(hidden)`` when the caller has it already.
        """
        from ..model.head import keypoints_from_features, pad_token_grid

        grid = pad_token_grid(token_grid, hidden.shape[1])
        scores = self.logits(hidden.float()) if scores is None else scores
        return self.out(keypoints_from_features(scores, grid, mask).flatten(1))

    def loss(self, hidden, token_grid, mask, scene_states,
             points=None) -> tuple[torch.Tensor, float]:
        """(loss, mean absolute error in the targets' units).

        The loss is the MSE in standardized units, plus :func:`token_targets_loss` when the
        objects' token-grid ``points`` [B, n_objects, 2] are given.
        """
        target = torch.as_tensor(np.stack([s[self.columns] for s in scene_states]),
                                 device=hidden.device)
        scores = self.logits(hidden.float())
        pred = self(hidden, token_grid, mask, scores)
        err = (pred * self.std + self.mean - target).abs().mean()
        loss = torch.mean((pred - (target - self.mean) / self.std) ** 2)
        if points is not None:
            loss = loss + token_targets_loss(scores, token_grid, mask, points)
        return loss, float(err.detach())


def localization_probe(readers, policy, keypoints: int,
                       field: str = "sft.localization_weight") -> LocalizationProbe:
    """A probe for the objects' x, y of the first dataset's ``environment_state``.

    ``field`` names the setting that asked for it in the errors.
    """
    from ..model import backbone as bb

    feature = readers[0].features.get(ENV_STATE_KEY)
    names = (feature or {}).get("names") or []
    cols = object_position_columns(names)
    if not cols:
        raise ConfigError(f"{field}: the dataset has no {ENV_STATE_KEY} object "
                          "positions (record it with `roboalign record bulk`, or set 0)")
    for r in readers[1:]:
        other = (r.features.get(ENV_STATE_KEY) or {}).get("names") or []
        if other != names:
            raise ConfigError(f"{field}: {ENV_STATE_KEY} differs between "
                              "datasets")
    stats = readers[0].stats.get(ENV_STATE_KEY)
    if stats is None:
        raise ConfigError(f"{field}: meta/stats.json has no {ENV_STATE_KEY}")
    mean = np.asarray(stats["mean"], np.float32).reshape(-1)[cols]
    std = np.asarray(stats["std"], np.float32).reshape(-1)[cols]
    return LocalizationProbe(bb.text_config(policy.backbone).hidden_size, keypoints,
                             len(policy.config.camera_names), cols, mean, std)


def scene_objects(names) -> list[str]:
    """The objects of an ``environment_state`` name list (the tool is not one).

    In :func:`object_position_columns` order.
    """
    return [names[c][:-2] for c in object_position_columns(names)[::2]]   # "<obj>.x"


def object_pixels(names, scene_states: np.ndarray, image_size, robot: str = "sim_arm",
                  camera: str = "scene") -> np.ndarray:
    """Pixels ``(u, v)`` [N, n_objects, 2] of the objects of sim frames in ``camera``.

    ``names``: the ``environment_state`` names; ``scene_states`` [N, len(names)] their values,
    recorded in the sim, whose fixed ``camera`` projects the objects' base-frame centres into
    an image of ``image_size`` (h, w). Objects in :func:`scene_objects` order.
    """
    from ..sim import TabletopEnv

    index = {n: i for i, n in enumerate(names)}
    cols = [[index[f"{o}.{a}"] for a in "xyz"] for o in scene_objects(names)]
    xyz = np.asarray(scene_states, np.float64)[:, cols]                # [N, O, 3]
    height, width = image_size
    with TabletopEnv(robot) as env:
        return env.project(xyz.reshape(-1, 3), width, height, camera).reshape(*xyz.shape[:2], 2)


def sim_token_points(names, scene_states: np.ndarray, token_grid, image_size,
                     robot: str = "sim_arm", camera: str = "scene") -> np.ndarray:
    """Token-grid points [N, n_objects, 2] of the objects of sim frames (for the token targets).

    As :func:`object_pixels`, on the token grid of ``VLAPolicy.token_grid``.
    """
    pixels = object_pixels(names, scene_states, image_size, robot, camera)
    height, width = image_size
    return pixels_to_grid(pixels, width, height, *image_grid_shape(token_grid)).astype(np.float32)


def image_grid_shape(token_grid) -> tuple[int, int]:
    """``(columns, rows)`` of merged patches of the first camera in a ``VLAPolicy.token_grid``."""
    grid = torch.as_tensor(token_grid)
    image = grid[grid[:, 0] == 0]
    return len(torch.unique(image[:, 1])), len(torch.unique(image[:, 2]))


def pixels_to_grid(pixels: np.ndarray, width: int, height: int, cols: int, rows: int) -> np.ndarray:
    """Pixel ``(u, v)`` -> the token grid's ``(x, y)``.

    As in ``VLAPolicy.token_grid``: cell centres at -1 .. 1 across ``cols`` x ``rows`` merged
    patches.
    """
    pixels = np.asarray(pixels, np.float64)
    col = pixels[..., 0] / (width / cols) - 0.5
    row = pixels[..., 1] / (height / rows) - 0.5
    return np.stack([col / max(cols - 1, 1) * 2 - 1, row / max(rows - 1, 1) * 2 - 1], axis=-1)


def token_targets_loss(scores, token_grid, mask, points):
    """Dense supervision of the probe's first keypoints, one per object.

    Keypoint ``o`` must put its softmax on the image token that holds object ``o``
    (cross-entropy over the tokens) and its offset where in that token the object is (L1). A
    classification over ~50 tokens per object teaches
    a random vision tower what an object looks like far faster than the regression alone.

    ``scores``: the probe's per-token outputs [B, T, 3K] (``LocalizationProbe.logits``);
    ``points``: [B, n_objects, 2] object centres in token-grid coordinates (``pixels_to_grid``;
    objects outside the image are ignored). Returns the loss (scalar).
    """
    from ..model.head import pad_token_grid

    grid = pad_token_grid(token_grid, scores.shape[1]).to(scores.device)
    k = scores.shape[-1] // 3
    n_obj = points.shape[1]
    if n_obj > k:
        raise ValueError(f"token targets: {n_obj} objects but only {k} keypoints")
    image = grid[:, 0] == 0
    if mask is not None:
        image = image[None] & mask.bool()
    else:
        image = image[None].expand(scores.shape[0], -1)
    xy, cell = grid[:, 1:3], grid[:, 3:5].clamp(min=1e-6)
    pts = torch.as_tensor(points, dtype=torch.float32, device=scores.device)   # [B, O, 2]
    # nearest cell centre per object (distance in cells), text tokens excluded
    d = ((pts[:, :, None] - xy[None, None]) / cell[None, None]).abs().amax(-1)   # [B, O, T]
    d = d.masked_fill(~image[:, None], float("inf"))
    target = d.argmin(-1)                                           # [B, O]
    inside = d.gather(-1, target[..., None])[..., 0] <= 0.5 + 1e-6   # on the image
    logits = scores[..., :n_obj].masked_fill(~image[..., None], float("-inf"))  # [B, T, O]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2).reshape(-1, logits.shape[1]),
                                           target.reshape(-1), reduction="none")
    offsets = torch.tanh(scores[..., k:]).unflatten(-1, (k, 2))[:, :, :n_obj]   # [B, T, O, 2]
    b = torch.arange(pts.shape[0], device=pts.device)[:, None]
    o = torch.arange(n_obj, device=pts.device)[None]
    pred = offsets[b, target, o]                                    # [B, O, 2]
    want = ((pts - xy[target]) / (cell[target] / 2)).clamp(-1, 1)
    l1 = (pred - want).abs().sum(-1)
    w = inside.float()
    return ((ce.view_as(w) + l1) * w).sum() / w.sum().clamp(min=1)

