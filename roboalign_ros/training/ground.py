"""Stage 0, ``ground``: teach a from-scratch vision tower where the objects are, on sim scenes.

A pretrained VLM comes with a vision encoder that has seen the web; the ``mini`` backbone of
``roboalign repro mini`` starts random, and the demos alone (a few hundred object layouts) are
too few for its vision tower to learn to localize: trained on them it memorizes layouts (held-out
error stays at ~5 cm). This stage renders fresh scenes instead: each sample is a new seeded
layout of a task (seeds from ``seed_base`` on, disjoint from the evaluation seeds), the arm at
a joint state taken from the demos (so arm poses and occlusions look like the demos'), rendered
by the same camera code at the policy's image size. The backbone (vision tower and the text
layers up to the feature layer) and a :class:`~.localization.LocalizationProbe` regress every
object's x, y; the output is a backbone directory for ``sft`` (``policy.backbone``).

Output ``<output_dir>/backbone/`` (model + processor) and ``ground_history.json`` (training and
held-out localization error per step). Trains in the shared loop (:mod:`.loop`), in one
process; resumable like the other stages (``checkpoint-<step>/backbone`` + the probe's and the
optimizer's state).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np
import torch

from .build import PolicyInitConfig, load_or_build_policy
from .config import ConfigError, DataConfig, RunConfig, check, load_config
from .localization import (
    LocalizationProbe,
    image_grid_shape,
    object_position_columns,
    pixels_to_grid,
)
from .loop import Trainer
from .samples import open_datasets

log = logging.getLogger(__name__)
BACKBONE_DIR = "backbone"


@dataclasses.dataclass
class GroundConfig:
    """``ground`` stage.

    Fields:
        data: the demo dataset(s): the arm poses and the tasks' names (scene states come from
            the sim, so any dataset of the sim arm will do).
        run, policy: as in ``sft`` (``policy.backbone``: the random backbone to train).
        tasks: sim tasks whose layouts are rendered (empty = the dataset's tasks).
        robot: sim robot config.
        seed_base: first layout seed (evaluation seeds are 100000 + i; keep clear of them).
        steps, batch_size, learning_rate, warmup_ratio, weight_decay, max_grad_norm.
        poses_per_layout: arm poses rendered per layout (a layout's physics settle costs
            more than a render).
        keypoints: spatial-softmax keypoints of the probe.
        token_targets: also supervise the probe's first keypoints densely: each must point
            at the image token that holds its object (see ``token_targets_loss``).
        eval_scenes: held-out scenes (seeds ``seed_base - eval_scenes`` .. ``seed_base - 1``)
            for the reported error; eval_every: steps between held-out evaluations.
    """

    section = "ground"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="runs/ground"))
    policy: PolicyInitConfig = dataclasses.field(default_factory=PolicyInitConfig)
    tasks: list[str] = dataclasses.field(default_factory=list)
    robot: str = "sim_arm"
    seed_base: int = 1_000_000
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    poses_per_layout: int = 4
    keypoints: int = 16
    token_targets: bool = True
    eval_scenes: int = 128
    eval_every: int = 100

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        p = self.section
        self.data.validate(f"{p}.data")
        self.run.validate(f"{p}.run")
        self.policy.validate(f"{p}.policy")
        check(p, "policy.backbone", bool(self.policy.backbone),
              "the ground stage trains a backbone (policy.backbone)", self.policy.backbone)
        check(p, "seed_base", self.seed_base >= 200_000 + self.eval_scenes,
              "must stay clear of the evaluation seeds (100000+)", self.seed_base)
        for name in ("steps", "batch_size", "keypoints", "eval_scenes", "eval_every",
                     "poses_per_layout"):
            check(p, name, getattr(self, name) >= 1, "must be >= 1", getattr(self, name))
        check(p, "learning_rate", self.learning_rate > 0, "must be > 0", self.learning_rate)
        check(p, "warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)",
              self.warmup_ratio)


class SceneSource:
    """Rendered sim scenes with the objects' state: ``scene(seed, pose)``.

    ``arm_states``: [N, state_dim] demo joint states (arm joints then the gripper opening);
    each scene takes one at random (seeded by the scene's seed).
    """

    def __init__(self, tasks, arm_states: np.ndarray, image_size, robot: str = "sim_arm",
                 camera: str = "scene"):
        from ..data.scene_state import environment_state_names
        from ..recording.bulk import scene_state
        from ..sim import TabletopEnv

        self.env = TabletopEnv(robot)
        self.tasks, self.arm_states = list(tasks), np.asarray(arm_states, np.float64)
        self.height, self.width = image_size
        self.camera, self._scene_state = camera, scene_state
        self.names = environment_state_names(list(self.env.objects))

    def scene(self, seed: int, pose: int = 0):
        """``(image HxWx3 uint8, environment state, instruction, object pixels)`` of a scene.

        The layout of ``seed``, with the ``pose``-th arm pose drawn for it. Object pixels:
        ``(u, v)`` [n_objects, 2] of every object's centre, in the order of the state.
        """
        rng = np.random.default_rng(seed)
        task = self.tasks[int(rng.integers(len(self.tasks)))]
        if self.env.task is None or (self.env.task.name, self.env.seed) != (task, seed):
            self.env.reset(task, seed)
        rng = np.random.default_rng([seed, pose])
        q = self.arm_states[int(rng.integers(len(self.arm_states)))]
        self.env.set_robot_pose(q[:-1], float(q[-1]))
        rgb, _ = self.env.render(self.width, self.height, self.camera, depth=False)
        state = self._scene_state(self.env, self.env.data).to_vector()
        points = np.stack([self.env.object_position(n) for n in self.env.objects])
        pixels = self.env.project(points, self.width, self.height, self.camera)
        return rgb, state, self.env.task.instruction, pixels


def _arm_states(readers) -> np.ndarray:
    states = [r.episode(e, decode_video=False).states for r in readers for e in range(len(r))]
    return np.concatenate(states)


def run_ground(config, overrides=()) -> Path:
    """Run the stage; returns the grounded backbone directory."""
    from ..model import backbone as bb
    from ..model.policy import Observation
    from ..sim.tasks import get_task

    cfg = load_config(GroundConfig, config, overrides)
    trainer = Trainer("ground", cfg.run)
    if trainer.num_processes > 1:
        raise ConfigError("ground: runs in one process (its forward stops early at the feature "
                          "layer, outside a wrapped model's forward)")
    readers = open_datasets(cfg.data.roots)
    policy = load_or_build_policy(cfg.policy, readers, trainer.device, cfg.run.seed)
    if len(policy.config.camera_names) != 1:
        raise ConfigError("ground: renders one camera (the sim's scene camera); the policy has "
                          f"{policy.config.camera_names}")
    try:
        tasks = list(cfg.tasks) or sorted({get_task(ep.task).name for ep in readers[0].episodes})
        for t in tasks:
            get_task(t)
    except ValueError as exc:
        raise ConfigError(f"ground.tasks: {exc}") from exc
    source = SceneSource(tasks, _arm_states(readers), policy.config.image_size or (224, 224),
                         cfg.robot, policy.config.camera_names[0])
    cols = object_position_columns(source.names)
    # held-out scenes: layouts seed_base - 1, seed_base - 2, ... (one pose each); their
    # statistics standardize the targets
    eval_pairs = [(cfg.seed_base - 1 - i, 0) for i in range(cfg.eval_scenes)]
    eval_scenes = [source.scene(seed, pose) for seed, pose in eval_pairs]
    targets = np.stack([scene[1][cols] for scene in eval_scenes])
    model = policy.backbone
    probe = LocalizationProbe(bb.text_config(model).hidden_size, cfg.keypoints, 1, cols,
                              targets.mean(axis=0), targets.std(axis=0))
    grid = policy.token_grid().to(trainer.device)
    cols, rows = image_grid_shape(grid)
    height, width = source.height, source.width
    model.train()
    model.requires_grad_(True)
    params = list(model.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model = trainer.prepare(model, opt, cfg.steps, extra=[probe], lr_scheduler="cosine",
                            warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm)

    def loss_of(scenes):  # SceneSource.scene tuples -> (loss, regression error in m)
        obs = [Observation({policy.config.camera_names[0]: img},
                           np.zeros(policy.config.state_dim, np.float32), instr)
               for img, _, instr, _ in scenes]
        inputs = policy.encode_observation(obs)
        hidden = bb.layer_hidden_states(model, dict(inputs), policy.feature_layer)
        points = np.stack([pixels_to_grid(s[3], width, height, cols, rows)
                           for s in scenes]) if cfg.token_targets else None
        return probe.loss(hidden, grid, inputs["attention_mask"], [s[1] for s in scenes],
                          points)

    def loss(step: int):  # the scenes of a step are a function of it: resume sees the same
        n, first = cfg.poses_per_layout, step * cfg.batch_size
        value, err = loss_of([source.scene(cfg.seed_base + i // n, i % n)
                              for i in range(first, first + cfg.batch_size)])
        return value, {"error_m": err}

    def held_out(step: int) -> dict:
        model.eval()
        errs = []
        with torch.no_grad():
            for i in range(0, len(eval_scenes), cfg.batch_size):
                errs.append(loss_of(eval_scenes[i:i + cfg.batch_size])[1])
        model.train()
        log.info("ground: step %d, held-out error %.1f cm", step, 100 * float(np.mean(errs)))
        return {"held_out_error_m": float(np.mean(errs))}

    def save_backbone(directory: Path):
        state = trainer.acc.get_state_dict(model)
        if trainer.is_main:
            trainer.acc.unwrap_model(model).save_pretrained(directory, state_dict=state)
            policy.processor.save_pretrained(directory)
        trainer.acc.wait_for_everyone()

    trainer.fit(itertools.count(trainer.step), loss, cfg.steps, evaluate=held_out,
                eval_every=cfg.eval_every, save=lambda path: save_backbone(path / BACKBONE_DIR))
    return trainer.finish(save_backbone, BACKBONE_DIR)


def main(argv=None) -> int:
    """CLI: ``ground --config X [--set key=value ...]``."""
    from . import stages

    return stages.main("ground", argv)


if __name__ == "__main__":
    raise SystemExit(main())
