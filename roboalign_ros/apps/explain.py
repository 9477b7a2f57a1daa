"""``roboalign explain``: where the policy looks when it reasons and acts.

    roboalign explain --model M --dataset D --episode E --frame F [--out DIR]
    roboalign explain --model M --image scene.png --instruction "pick up the red cube"
    roboalign explain --model M --dataset D --check 20       named object vs distractor

Writes, per camera, one overlay PNG per source (each rationale section, the whole reasoning,
the FAST action tokens and the action head; :mod:`roboalign_ros.model.attention` says how
they are computed), a side-by-side PNG of all of them, and ``attention.json``. ``--check N``
measures on N frames of a sim dataset whether the attention falls on the object the
instruction names more than on the other objects: the sim recorded where each object was.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

RADIUS_PX = 20.0   # a cube is ~15 px wide in a 224x168 scene image; one merged patch is 28 px


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write_overlays(maps, out: Path) -> list[Path]:
    """``<source>_<camera>.png`` for every map and ``explain_<camera>.png`` side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for camera, image in maps.images.items():
        for source in maps.sources:
            path = out / f"{_slug(source)}_{camera}.png"
            Image.fromarray(maps.overlay(source, camera)).save(path)
            written.append(path)
        panels = [("camera", image)] + [(s, maps.overlay(s, camera)) for s in maps.sources]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.4))
        for ax, (title, img) in zip(np.atleast_1d(axes), panels):
            ax.imshow(img)
            ax.set_title(title if title == "camera" else
                         f"{title}\n({maps.image_share.get(title, 0):.0%} on image)", fontsize=8)
            ax.axis("off")
        fig.suptitle(f"attention on the {camera} camera", fontsize=9)
        fig.tight_layout()
        path = out / f"explain_{camera}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def dataset_observation(reader, episode: int, frame: int, camera_names):
    """(Observation, decoded Episode) of ``frame`` of ``episode`` of a dataset."""
    from roboalign_ros.model import Observation

    if not 0 <= episode < len(reader):
        raise ValueError(f"--episode: {episode} outside 0..{len(reader) - 1}")
    ep = reader.episode(episode)
    if not 0 <= frame < len(ep):
        raise ValueError(f"--frame: {frame} outside 0..{len(ep) - 1} (episode {episode})")
    missing = [c for c in camera_names if c not in ep.frames]
    if missing:
        raise ValueError(f"--dataset: has no camera {missing} that the policy reads "
                         f"(it has {sorted(ep.frames)})")
    return Observation({c: ep.frames[c][frame] for c in camera_names}, ep.states[frame],
                       ep.task), ep


def scene_pixels(reader, ep, frame: int, size) -> dict[str, np.ndarray]:
    """Pixel (u, v) of every object of a sim frame in an image of ``size`` (h, w)."""
    from roboalign_ros.data.scene_state import ENV_STATE_KEY
    from roboalign_ros.training.localization import object_pixels, scene_objects

    if ENV_STATE_KEY not in ep.extra:
        raise ValueError(f"--check needs a sim dataset (it has no {ENV_STATE_KEY})")
    names = reader.extra_features[ENV_STATE_KEY]["names"]
    pixels = object_pixels(names, ep.extra[ENV_STATE_KEY][frame][None], size)[0]
    return dict(zip(scene_objects(names), pixels))


def attention_check(explainer, reader, frames: int, radius: float = RADIUS_PX,
                    seed: int = 0) -> dict:
    """Attention mass near the named object vs near the others, over ``frames`` sim frames.

    Frames come from episodes whose task names an object of the scene, one per episode, in
    the first half of the episode (before the gripper covers the object). For each source the
    result holds the mean mass near the named object, near the nearest-scoring distractor and
    the share of frames where the named object gets more than every distractor (by chance:
    one in the number of objects).
    """
    from roboalign_ros.sim.tasks import get_task

    rng = np.random.default_rng(seed)
    camera = explainer.policy.config.camera_names[0]
    rows, skipped = [], 0
    for e in rng.permutation(len(reader)):
        if len(rows) >= frames:
            break
        try:
            target = get_task(reader.episodes[e].task).obj
        except ValueError:
            skipped += 1
            continue
        f = int(rng.integers(0, max(1, reader.episodes[e].length // 2)))
        obs, ep = dataset_observation(reader, int(e), f, explainer.policy.config.camera_names)
        size = explainer.policy._images(obs)[0].shape[:2]
        pixels = scene_pixels(reader, ep, f, size)
        if target not in pixels:
            skipped += 1
            continue
        maps = explainer.explain(obs)
        row = {"episode": int(e), "frame": f, "task": ep.task, "object": target}
        for source in maps.sources:
            mass = {o: maps.mass_within(source, camera, p, radius) for o, p in pixels.items()}
            others = {o: m for o, m in mass.items() if o != target}
            row[source] = {"named": mass[target], "distractor": max(others.values()),
                           "distractor_mean": float(np.mean(list(others.values()))),
                           "mass": mass}
        rows.append(row)
    area = np.pi * radius ** 2 / float(np.prod(size)) if rows else 0.0
    summary = {}
    for source in [k for k in rows[0] if isinstance(rows[0][k], dict)] if rows else []:
        named = np.array([r[source]["named"] for r in rows if source in r])
        best = np.array([r[source]["distractor"] for r in rows if source in r])
        mean = np.array([r[source]["distractor_mean"] for r in rows if source in r])
        summary[source] = {"frames": len(named), "named_mass": float(named.mean()),
                           "best_distractor_mass": float(best.mean()),
                           "mean_distractor_mass": float(mean.mean()),
                           "named_wins": float(np.mean(named > best))}
    objects = len(rows[0][next(iter(summary))]["mass"]) if summary else 0
    return {"frames": len(rows), "radius_px": radius, "uniform_mass": area,
            "chance_wins": 1.0 / objects if objects else 0.0,
            "skipped_episodes": skipped, "sources": summary, "rows": rows}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign explain`` (and its description); ``func`` explains."""
    ap.description = __doc__
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.add_argument("--model", required=True, help="policy checkpoint directory (or 'tiny')")
    ap.add_argument("--dataset", help="LeRobot v3 dataset to take the observation from")
    ap.add_argument("--episode", type=int, default=0)
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--image", action="append", default=[],
                    help="camera image (PNG/JPEG), once per camera in the policy's order")
    ap.add_argument("--instruction", help="instruction for --image (default: the dataset's)")
    ap.add_argument("--layers", help="decoder layers to average, e.g. 1,2,3 "
                                     "(default: 1 .. the head's feature layer)")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="instead: named object vs distractor over N dataset frames")
    ap.add_argument("--radius", type=float, default=RADIUS_PX,
                    help=f"px around an object for --check (default {RADIUS_PX:g})")
    ap.add_argument("--out", default="runs/explain", help="output directory")
    ap.set_defaults(func=run_cli)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``roboalign explain``."""
    ap = argparse.ArgumentParser(prog="roboalign explain")
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def run_cli(a: argparse.Namespace) -> int:
    """``roboalign explain`` with parsed options."""
    try:
        layers = [int(x) for x in a.layers.split(",")] if a.layers else None
    except ValueError:
        print(f"roboalign explain: --layers: expected integers like 1,2,3, got {a.layers!r}",
              file=sys.stderr)
        return 2
    if not a.dataset and not a.image:
        print("roboalign explain: give --dataset (with --episode/--frame) or --image",
              file=sys.stderr)
        return 2
    from roboalign_ros.model import CheckpointError, Observation
    from roboalign_ros.model.attention import AttentionExplainer
    from roboalign_ros.robot import load_robot_config
    from roboalign_ros.serving import load_policy

    try:
        policy = load_policy(a.model, load_robot_config("sim_arm"), "cpu")
        explainer = AttentionExplainer(policy, layers)
    except (CheckpointError, OSError, ValueError) as exc:
        print(f"roboalign explain: --model/--layers: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    try:
        reader = None
        if a.dataset:
            from roboalign_ros.data.reader import DatasetReader

            reader = DatasetReader(a.dataset)
        if a.check:
            if reader is None:
                raise ValueError("--check needs --dataset")
            result = attention_check(explainer, reader, a.check, a.radius)
            out.mkdir(parents=True, exist_ok=True)
            (out / "attention_check.json").write_text(json.dumps(result, indent=1))
            print(f"{result['frames']} frames, mass within {a.radius:g} px of an object "
                  f"(uniform attention: {result['uniform_mass']:.3f})")
            print(f"{'source':<20} {'named':>7} {'best other':>10} {'mean other':>10} "
                  f"{'named wins':>10} (chance {result['chance_wins']:.0%})")
            for source, s in result["sources"].items():
                print(f"{source:<20} {s['named_mass']:>7.3f} {s['best_distractor_mass']:>10.3f} "
                      f"{s['mean_distractor_mass']:>10.3f} {s['named_wins']:>10.0%}")
            print(f"-> {out / 'attention_check.json'}")
            return 0
        if a.image:
            from PIL import Image

            names = policy.config.camera_names
            if len(a.image) != len(names):
                raise ValueError(f"--image: the policy reads {len(names)} camera(s) {names}, "
                                 f"got {len(a.image)} image(s)")
            if not a.instruction:
                raise ValueError("--instruction is required with --image")
            images = {n: np.asarray(Image.open(p).convert("RGB")) for n, p in zip(names, a.image)}
            obs = Observation(images, np.zeros(policy.config.state_dim, np.float32),
                              a.instruction)
        else:
            obs, _ = dataset_observation(reader, a.episode, a.frame, policy.config.camera_names)
            if a.instruction:
                obs = Observation(obs.images, obs.state, a.instruction)
        maps = explainer.explain(obs)
    except (OSError, ValueError) as exc:
        print(f"roboalign explain: {exc}", file=sys.stderr)
        return 2
    written = write_overlays(maps, out)
    summary = {"instruction": obs.instruction, "reasoning": maps.reasoning_text,
               "layers": explainer.layers, "image_share": maps.image_share,
               "maps": {s: {c: m.tolist() for c, m in cams.items()}
                        for s, cams in maps.maps.items()}}
    (out / "attention.json").write_text(json.dumps(summary, indent=1))
    print(maps.reasoning_text or "(no reasoning)")
    for path in written:
        print(f"-> {path}")
    return 0
