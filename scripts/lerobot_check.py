#!/usr/bin/env python3
"""LeRobot's own tools on our datasets, and ours on what LeRobot writes: PASS / FAIL per check.

Runs in our venv and calls LeRobot's, a venv of its own (``bash scripts/lerobot_check.sh``
makes it and runs this). Four datasets: ``roboalign record bulk --wrist --depth``,
``roboalign data from-bag`` of a synthetic teleoperation bag (compressed colour + depth),
``record bulk --wrist`` without depth, and ``record bulk --wrist --depth --lerobot-depth``
(the opt-in copy of the depth as LeRobot's own depth features).
For each: LeRobot loads every item (``video_backend=pyav``), ``lerobot-train`` runs ACT and
diffusion 3 steps, ``lerobot-edit-dataset`` deletes, splits and merges; our reader then reads
each result (actions and tasks equal the original's; depth: our lossless streams are not
LeRobot features, so LeRobot's tools do not carry them and the result has none, unless the
dataset has the LeRobot copy, which must read back bit-exact), the source's depth files stay
unchanged, bit for bit, and ``roboalign train head`` (tiny) trains on the merged one. On the
copy, LeRobot's decoded depth must equal ours, and LeRobot's ACT and diffusion (3-channel
cameras only) train after ``lerobot-edit-dataset remove_feature`` takes the depth out. Last,
LeRobot records a dataset with depth its own way, and our reader must return what LeRobot's
returns. Prints a table and writes ``<out>/results.json``.

    bash scripts/lerobot_check.sh [--out runs/lerobot_check] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    ds = LeRobotDataset("local/" + sys.argv[2], root=sys.argv[1], video_backend="pyav")
    shapes = {}
    for i in range(len(ds)):
        item = ds[i]
    for k, v in item.items():
        if hasattr(v, "shape") and k.startswith("observation.images."):
            shapes[k] = [list(v.shape), str(v.dtype)]
    print(json.dumps({"items": len(ds), "episodes": ds.meta.total_episodes,
                      "image_shapes": shapes}))
""")


# LeRobot decodes the depth features of one episode; saved for our reader to compare
DECODE_DEPTH = textwrap.dedent("""
    import sys
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    ds = LeRobotDataset("local/" + sys.argv[2], root=sys.argv[1], video_backend="pyav")
    keys = [k for k, f in ds.meta.features.items() if (f.get("info") or {}).get("is_depth_map")]
    end = int(ds.meta.episodes[0]["dataset_to_index"])
    for k in keys:
        np.save(sys.argv[3] + "_" + k + ".npy",
                np.stack([ds[i][k].numpy().reshape(ds[i][k].shape[-2:]) for i in range(end)]))
    print(keys)
""")


def lerobot_decodes_our_depth(root: Path, saved: str) -> tuple[bool, str]:
    """LeRobot's decode of the copy (episode 0) against our reader's lossless depth."""
    try:
        import numpy as np

        from roboalign_ros.data import DatasetReader
        from roboalign_ros.data import lerobot_format as fmt

        ep = DatasetReader(root).episode(0, depth=True)
        parts = []
        for cam, ours in ep.depth.items():
            theirs = np.load(f"{saved}_{fmt.camera_key(cam)}.npy")
            if theirs.shape != ours.shape or not np.array_equal(theirs, ours.astype(np.float32)):
                worst = float(np.abs(theirs - ours).max()) if theirs.shape == ours.shape else -1
                return False, f"{cam}: LeRobot decodes {theirs.shape}, off by up to {worst} mm"
            parts.append(f"{cam} {ours.shape} {int(ours.min())}-{int(ours.max())} mm")
        return bool(parts), "equal, bit for bit: " + "; ".join(parts)
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure
        return False, f"{type(exc).__name__}: {exc}"


# LeRobot records a dataset with depth its own way (12-bit log codes, x265), reads it back and
# saves what its reader returns (mm) and the depth it was given, for our reader to compare
RECORD_DEPTH = textwrap.dedent("""
    import sys
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    root, H, W, N = sys.argv[1], 48, 64, 20
    img = {"dtype": "video", "names": ["height", "width", "channels"]}
    feats = {"observation.state": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
             "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
             "observation.images.cam": {**img, "shape": [H, W, 3]},
             "observation.images.depth": {**img, "shape": [H, W, 1],
                                          "info": {"is_depth_map": True}}}
    ds = LeRobotDataset.create("local/lerobot_depth", 15, feats, root=root,
                               video_backend="pyav")
    rng, truth = np.random.default_rng(0), []
    for episode in range(2):
        for t in range(N):
            d = (600 + 400 * np.arange(H)[:, None] / H + rng.normal(0, 2, (H, W)))
            d = d.astype(np.uint16)
            d[rng.random((H, W)) < 0.01] = 0
            truth.append(d)
            ds.add_frame({"observation.state": np.zeros(2, np.float32),
                          "action": np.full(2, t, np.float32),
                          "observation.images.cam": np.full((H, W, 3), t * 10, np.uint8),
                          "observation.images.depth": d[..., None],
                          "task": "pick up the red cube"})
        ds.save_episode()
    ds.finalize()
    back = LeRobotDataset("local/lerobot_depth", root=root, video_backend="pyav")
    read = [back[i]["observation.images.depth"].numpy().reshape(H, W) for i in range(len(back))]
    np.save(root + "_lerobot_read.npy", np.stack(read))
    np.save(root + "_truth.npy", np.stack(truth))
""")


def lerobot_depth_equal(root: Path) -> tuple[bool, str]:
    """Our reader on LeRobot's own depth dataset: equal to what LeRobot's reader returned."""
    try:
        import numpy as np

        from roboalign_ros.data import DatasetReader

        r = DatasetReader(root)
        ours = np.concatenate([r.episode(e, depth=True).depth["depth"] for e in range(len(r))])
        theirs = np.load(str(root) + "_lerobot_read.npy")
        truth = np.load(str(root) + "_truth.npy")
        valid = truth > 0
        worst = int(np.abs(ours[valid].astype(int) - truth[valid]).max())
        same = ours.shape == theirs.shape and np.array_equal(ours.astype(np.float32), theirs)
        return same, (f"{len(r)} episodes; equal to LeRobot's reader: {same}; largest "
                      f"difference from the depth recorded {worst} mm (12-bit log codes)")
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure
        return False, f"{type(exc).__name__}: {exc}"


class Check:
    """Runs commands, records PASS / FAIL with the command and the error's tail."""

    def __init__(self, out: Path, lerobot: Path):
        self.out, self.lerobot, self.results = out, lerobot, []

    def run(self, name: str, cmd: list[str], env: dict | None = None) -> bool:
        print(f"[lerobot_check] {name}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
        ok = proc.returncode == 0
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        self.results.append({"check": name, "result": "PASS" if ok else "FAIL",
                             "command": " ".join(cmd), "tail": tail})
        print(f"    {'PASS' if ok else 'FAIL'} {' | '.join(tail)[-300:]}", flush=True)
        return ok

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.results.append({"check": name, "result": "PASS" if ok else "FAIL",
                             "command": "(this script, our reader)", "tail": [detail]})
        print(f"[lerobot_check] {name}: {'PASS' if ok else 'FAIL'} {detail}", flush=True)

    def lerobot_bin(self, tool: str) -> str:
        return str(self.lerobot / "bin" / tool)


def make_datasets(out: Path) -> dict[str, Path]:
    """The two datasets under test, made by our own commands."""
    from roboalign_ros.apps.synthetic_bag import write_bag

    bulk, bag, from_bag = out / "bulk", out / "bag", out / "from_bag"
    for root, depth in ((bulk, ["--depth"]), (out / "bulk_rgb", []),
                        (out / "bulk_lerobot_depth", ["--depth", "--lerobot-depth"])):
        subprocess.run(["roboalign", "record", "bulk", "--tasks", "all", "--episodes", "1",
                        "--out", str(root), "--wrist", *depth, "--image-size", "96", "--quiet"],
                       check=True)
    write_bag(bag, [(0.0, 3.0), (5.0, 3.0), (10.0, 3.0)], compressed_images=True)
    mapping = out / "bag_map.yaml"
    import yaml

    from roboalign_ros.robot import package_path

    m = yaml.safe_load(package_path("config", "bag_maps", "recorder.yaml").read_text())
    m.update(split="gap", depth_cameras={
        "scene_depth": "/camera/camera/aligned_depth_to_color/image_raw"})
    mapping.write_text(yaml.safe_dump(m))
    subprocess.run(["roboalign", "data", "from-bag", str(bag), "--map", str(mapping), "--out",
                    str(from_bag)], check=True)
    return {"bulk": bulk, "from_bag": from_bag, "bulk_rgb": out / "bulk_rgb",
            "bulk_lerobot_depth": out / "bulk_lerobot_depth"}


def same_episodes(a: Path, b: Path, episodes_b_to_a: dict[int, int]) -> tuple[bool, str]:
    """Our reader on ``b``: every episode decodes, its actions and task equal ``a``'s; depth,
    if ``b`` has any, equal too."""
    try:
        return _same_episodes(a, b, episodes_b_to_a)
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure
        return False, f"{type(exc).__name__}: {exc}"


def _same_episodes(a: Path, b: Path, episodes_b_to_a: dict[int, int]) -> tuple[bool, str]:
    import numpy as np

    from roboalign_ros.data import DatasetReader

    ra, rb = DatasetReader(a), DatasetReader(b)
    if not set(ra.lerobot_depth) <= set(rb.depth_cameras):
        return False, f"the LeRobot depth copies {ra.lerobot_depth} were not carried"
    worst = 0
    for j, i in episodes_b_to_a.items():
        ea, eb = ra.episode(i, depth=True), rb.episode(j, depth=True)
        if not np.array_equal(ea.actions, eb.actions) or ea.task != eb.task:
            return False, f"episode {j}: actions or task differ from episode {i}"
        for cam, d in eb.depth.items():
            worst = max(worst, int(abs(d.astype(int) - ea.depth[cam]).max()))
    depth = (f"depth ({sorted(rb.depth_cameras)}) read back, largest difference {worst} mm"
             if rb.depth_cameras else
             f"no depth (LeRobot does not carry ours; the source had {sorted(ra.depth_cameras)})")
    return worst == 0, f"{len(rb)} episodes read; {depth}"


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every depth file of ours under ``root``."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "depth").rglob("*.mkv"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/lerobot_check")
    ap.add_argument("--lerobot-venv", default=os.environ.get("LEROBOT_VENV", ""))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    check = Check(out, Path(args.lerobot_venv))
    lpy = check.lerobot_bin("python")
    version = subprocess.run([lpy, "-c", "import lerobot; print(lerobot.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    print(f"[lerobot_check] LeRobot {version} ({args.lerobot_venv})")
    datasets = make_datasets(out)
    hf_home = {"HF_LEROBOT_HOME": str(out / "hf"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    for name, root in datasets.items():
        from roboalign_ros.data import DatasetReader
        from roboalign_ros.data import lerobot_format as fmt

        reader = DatasetReader(root)
        n, copies = len(reader), [fmt.camera_key(c) for c in reader.lerobot_depth]
        before = file_digests(root)
        check.run(f"{name}: LeRobot loads every item",
                  [lpy, "-c", LOAD, str(root), name], hf_home)
        edit = check.lerobot_bin("lerobot-edit-dataset")
        train_root, train_name = root, name
        if copies:
            saved = str(out / f"{name}_lerobot_decoded")
            if check.run(f"{name}: LeRobot decodes the depth copy (episode 0)",
                         [lpy, "-c", DECODE_DEPTH, str(root), name, saved], hf_home):
                check.record(f"{name}: LeRobot's decoded depth equals ours",
                             *lerobot_decodes_our_depth(root, saved))
            # LeRobot's ACT and diffusion take 3-channel cameras only (its own depth too)
            train_root, train_name = out / f"{name}_no_depth", f"{name}_no_depth"
            check.run(f"{name}: lerobot-edit-dataset remove_feature (depth, for training)", [
                edit, f"--repo_id=local/{name}", f"--root={root}",
                f"--new_repo_id=local/{train_name}", f"--new_root={train_root}",
                "--operation.type=remove_feature",
                f"--operation.feature_names={json.dumps(copies)}"], hf_home)
        for policy in ("act", "diffusion"):
            check.run(f"{name}: lerobot-train {policy}, 3 steps", [
                check.lerobot_bin("lerobot-train"), f"--dataset.repo_id=local/{train_name}",
                f"--dataset.root={train_root}", "--dataset.video_backend=pyav",
                f"--policy.type={policy}", "--policy.device=cpu", "--policy.push_to_hub=false",
                "--steps=3", "--batch_size=2", "--num_workers=0", "--save_checkpoint=false",
                "--wandb.enable=false", "--policy.pretrained_backbone_weights=null",
                f"--output_dir={out / 'train' / name / policy}"],
                hf_home)
        deleted, split, merged = out / f"{name}_deleted", out / f"{name}_split", \
            out / f"{name}_merged"
        half = n // 2
        halves = json.dumps({"a": list(range(half)), "b": list(range(half, n))})
        if check.run(f"{name}: lerobot-edit-dataset delete episode 0", [
                edit, f"--repo_id=local/{name}", f"--root={root}",
                f"--new_repo_id=local/{name}_deleted", f"--new_root={deleted}",
                "--operation.type=delete_episodes", "--operation.episode_indices=[0]"], hf_home):
            check.record(f"{name}: our reader reads LeRobot's delete", *same_episodes(
                root, deleted, {j: j + 1 for j in range(n - 1)}))
        if check.run(f"{name}: lerobot-edit-dataset split", [
                edit, f"--repo_id=local/{name}", f"--root={root}", f"--new_root={split}",
                "--operation.type=split",
                f"--operation.splits={halves}"],
                hf_home):
            check.record(f"{name}: our reader reads LeRobot's split", *same_episodes(
                root, split / "b", {j: half + j for j in range(n - half)}))
            if check.run(f"{name}: lerobot-edit-dataset merge (the two halves)", [
                    edit, f"--new_repo_id=local/{name}_merged", f"--new_root={merged}",
                    "--operation.type=merge",
                    f"--operation.repo_ids={json.dumps([name + '_a', name + '_b'])}",
                    f"--operation.roots={json.dumps([str(split / 'a'), str(split / 'b')])}"],
                    hf_home):
                check.record(f"{name}: our reader reads LeRobot's merge",
                             *same_episodes(root, merged, {j: j for j in range(n)}))
                tiny = out / "tiny_policy"
                if not tiny.exists():
                    subprocess.run(["roboalign", "model", "tiny", str(tiny)], check=True)
                # teleoperation has no environment state: no grounding probe (the head says so)
                probe = [] if name != "from_bag" else ["--set", "localization_weight=0"]
                check.run(f"{name}: roboalign train head (tiny) on LeRobot's merge", [
                    "roboalign", "train", "head", "--config",
                    str(ROOT / "config/training/mini/head.yaml"), *probe,
                    "--set", f"data.roots=[{merged}]", "--set", f"policy.checkpoint={tiny}",
                    "--set", f"run.output_dir={out / 'head' / name}", "--set", "max_steps=3",
                    "--set", "batch_size=4", "--set", "eval_every=3", "--set",
                    "eval_samples=8"])
        after = file_digests(root)
        check.record(f"{name}: our depth files unchanged after LeRobot's tools ran",
                     before == after, f"{len(after)} depth files, sha256 equal: {before == after}")
    lerobot_depth = out / "lerobot_depth"
    if check.run("lerobot_depth: LeRobot records depth its own way (12-bit, x265)",
                 [lpy, "-c", RECORD_DEPTH, str(lerobot_depth)], hf_home):
        check.record("lerobot_depth: our reader reads LeRobot's depth as LeRobot does",
                     *lerobot_depth_equal(lerobot_depth))
    (out / "results.json").write_text(json.dumps(
        {"lerobot": version, "results": check.results}, indent=2))
    print(f"\nLeRobot {version}:")
    for r in check.results:
        print(f"  {r['result']}  {r['check']}")
    return 0 if all(r["result"] == "PASS" for r in check.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
