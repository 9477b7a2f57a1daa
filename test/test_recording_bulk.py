"""Headless bulk recorder: the frames sim_node would publish, the recorder's sampling, the split."""

import dataclasses
import json
import math

import numpy as np
import pytest

pytest.importorskip("mujoco")

from roboalign_ros.data import DatasetReader  # noqa: E402
from roboalign_ros.data import scene_state as ss  # noqa: E402
from roboalign_ros.data import split as sp  # noqa: E402
from roboalign_ros.recording import bulk  # noqa: E402
from roboalign_ros.sim import TASKS, TabletopEnv  # noqa: E402
from roboalign_ros.sim.expert import PHASES, ScriptedExpert  # noqa: E402
from roboalign_ros.sim.server import SceneCamera, SimServer  # noqa: E402

FPS, SKEW = 15, 0.05


@pytest.fixture(scope="module")
def env():
    e = TabletopEnv()
    yield e
    e.close()


@pytest.fixture(scope="module")
def run(env):
    """One simulated pick episode (no rendering)."""
    return bulk.simulate(env, ScriptedExpert(env), "pick_red_cube", 5, FPS, SKEW, settle=0.3)


def test_frames_equal_what_sim_node_publishes(env):
    """Same state -> same image, rendered later from a snapshot by another env."""
    server = SimServer()
    server.reset("place_red_cube_in_bowl", 11)
    expert = ScriptedExpert(server.env)
    camera = SceneCamera(server, 96, 72, depth=True)  # sim_node's camera path
    renderer = bulk.FrameRenderer(env, 96, 72, depth=True)  # the bulk recorder's, own env
    assert renderer.intrinsics == camera.intrinsics
    pairs = []
    for tick in range(120):
        server.env.step(*expert.act())
        if tick in (0, 60, 119):
            pairs.append((camera.render(), bulk.Snapshot.of(server.env.data)))
    for published, snapshot in pairs:  # rendered after the sim moved on
        images, state = renderer.render(snapshot)
        rgb, depth = images["scene"], images["scene_depth"]
        assert rgb.dtype == np.uint8 and rgb.shape == (72, 96, 3)
        np.testing.assert_array_equal(rgb, published.rgb)
        assert depth.dtype == np.uint16    # the 16UC1 sim_node publishes, to the millimetre
        np.testing.assert_array_equal(depth, published.depth_mm)
    pairs = [(p.rgb, s) for p, s in pairs]
    assert not np.array_equal(pairs[0][0], pairs[-1][0])  # the arm moved: a real comparison
    np.testing.assert_allclose(state.tool, server.env.tool_pose()[:3, 3], atol=1e-3)
    camera.close()


def test_recorder_sampling_arithmetic(env, run):
    dt = env.control_period
    times = np.array([f.time for f in run.frames])
    np.testing.assert_allclose(times, np.arange(len(times)) / FPS, atol=1e-9)  # t0 + i / fps
    assert run.success and times[-1] <= run.sim_seconds + 1e-9
    assert run.sim_seconds - times[-1] < 1 / FPS
    n_arm = len(env.robot.arm_joints)
    qadr = env._qadr  # arm joints then the first finger joint, as /joint_states has them
    for f in run.frames:
        snap, state = f.values[bulk.CAMERA], f.values[bulk.STATE]
        # image and joint state: the sample nearest to the frame time, from the same tick
        assert f.stamps[bulk.CAMERA] == f.stamps[bulk.STATE] == snap.time
        assert abs(snap.time - round(f.time / dt) * dt) < 1e-9
        np.testing.assert_allclose(state[:n_arm], snap.qpos[qadr[:n_arm]], rtol=0, atol=1e-6)
        assert state[n_arm] == pytest.approx(env.robot.joint_to_gripper(snap.qpos[qadr[n_arm]]),
                                             abs=1e-6)
        # commands: the latest sent at or before the frame time (hold), here within a tick
        assert f.stamps[bulk.COMMAND] <= f.time + 1e-9 and f.time - f.stamps[bulk.COMMAND] < dt
    phases = [PHASES[f.values[bulk.PHASE]] for f in run.frames]
    assert list(dict.fromkeys(phases)) == ["pregrasp", "descend", "close", "lift", "hold", "done"]


def test_failed_expert_episode_is_not_successful(env):
    short = dataclasses.replace(TASKS["pick_red_cube"], episode_seconds=1.0)
    run = bulk.simulate(env, ScriptedExpert(env), short, 5, FPS, SKEW, settle=0.3)
    assert not run.success and run.sim_seconds == pytest.approx(1.0, abs=0.011)


def test_record_bulk_dataset_split_and_failures(tmp_path, monkeypatch):
    real = bulk.simulate
    failing = next(sp.train_seed_stream("push_red_cube_right", 3))

    def simulate(env, expert, task, seed, *args, **kw):  # the expert fails one seed
        out = real(env, expert, task, seed, *args, **kw)
        return dataclasses.replace(out, success=out.success and seed != failing)

    monkeypatch.setattr(bulk, "simulate", simulate)
    root = tmp_path / "ds"
    cfg = bulk.BulkConfig(root, ["pick_red_cube", "push_red_cube_right"], episodes=1,
                          split_seed=3, width=64, height=48, progress=False)
    result = bulk.record_bulk(cfg)
    assert result.saved == {"pick_red_cube": 1, "push_red_cube_right": 1}
    assert result.failed == {"pick_red_cube": [], "push_red_cube_right": [failing]}
    assert "failed 1" in result.summary() and result.frames_per_second > 0

    r = DatasetReader(root)
    assert len(r) == 2 and r.fps == FPS and r.cameras == {"scene": (48, 64)}
    assert r.state_names == r.action_names == [*TabletopEnv().robot.arm_joints, "gripper"]
    split = sp.load_split(root)
    assert split.failed["push_red_cube_right"] == [failing]
    assert failing not in split.train["push_red_cube_right"]
    assert [t for t, _ in split.episodes] == ["pick_red_cube", "push_red_cube_right"]
    assert all(s < split.eval_first_seed for seeds in split.train.values() for s in seeds)
    assert split.eval_seeds(3) == [100000, 100001, 100002]
    meta = ss.SimMetadata.from_json(r.metadata["sim"])
    names = r.extra_features[ss.ENV_STATE_KEY]["names"]
    for i, (task, seed) in enumerate(split.episodes):
        ep = r.episode(i)
        info = meta.tasks[ep.task]
        assert info.name == task and ep.info.success and ep.info.source == "expert"
        assert seed in split.train[task]
        np.testing.assert_allclose(ep.capture_times, np.arange(len(ep)) / FPS, atol=1e-9)
        phases = [meta.phases[p] for p in ep.extra[ss.PHASE_KEY]]
        assert phases[0] == info.plan[0] and phases[-1] == "done"
        first = ss.SceneState.from_vector(names, ep.extra[ss.ENV_STATE_KEY][0])
        np.testing.assert_allclose(first.gripper, ep.states[0][-1], atol=1e-6)
        assert ep.frames["scene"].shape == (len(ep), 48, 64, 3)
    # the last frame of the pick shows the cube held and lifted
    last = ss.SceneState.from_vector(names, r.episode(0, False).extra[ss.ENV_STATE_KEY][-1])
    assert last.holding == "red_cube" and last.objects["red_cube"].position[2] > 0.06

    # a crash after the split was written but before the episode: the seed is forgotten
    stream = sp.train_seed_stream("pick_red_cube", 3)
    first, second = next(stream), next(stream)
    split.add("pick_red_cube", second, saved=True)
    sp.save_split(root, split)
    # appending continues each task's seed order; another layout is refused
    bulk.record_bulk(dataclasses.replace(cfg, tasks=["pick_red_cube"]))
    split = sp.load_split(root)
    assert split.train["pick_red_cube"] == [first, second] and len(split.episodes) == 3
    assert len(DatasetReader(root)) == 3
    with pytest.raises(ValueError, match="cameras"):
        bulk.record_bulk(dataclasses.replace(cfg, width=32))


def test_depth_is_recorded_when_asked_and_an_append_must_match(tmp_path):
    root = tmp_path / "depth"
    cfg = bulk.BulkConfig(root, ["pick_red_cube"], episodes=1, width=64, height=48, fps=FPS,
                          depth=True, progress=False).resolved()
    bulk.record_bulk(cfg)
    r = DatasetReader(root)
    assert r.depth_cameras == {"scene_depth": (48, 64)}
    ep = r.episode(0, depth=True)
    d = ep.depth["scene_depth"]
    assert d.shape == (len(ep), 48, 64) and 300 < np.median(d) < 3000   # the table, in mm
    with pytest.raises(ValueError, match="depth cameras"):
        bulk.record_bulk(dataclasses.replace(cfg, depth=False))


def test_the_wrist_camera_is_recorded_at_the_same_instants(tmp_path):
    root = tmp_path / "wrist"
    cfg = bulk.BulkConfig(root, ["pick_red_cube"], episodes=1, width=64, height=48, fps=FPS,
                          wrist=True, progress=False).resolved()
    bulk.record_bulk(cfg)
    r = DatasetReader(root)
    assert r.cameras == {"scene": (48, 64), "wrist": (48, 64)}
    ep = r.episode(0)
    scene, wrist = ep.frames["scene"], ep.frames["wrist"]
    assert wrist.shape == scene.shape and not np.allclose(wrist.mean(), scene.mean(), atol=1)
    # the hand camera sees the scene change as the arm moves in
    assert np.abs(wrist[-1].astype(int) - wrist[0].astype(int)).mean() > 5
    with pytest.raises(ValueError, match="cameras"):
        bulk.record_bulk(dataclasses.replace(cfg, wrist=False))


def test_cli_options_and_defaults(tmp_path):
    args = bulk.parse_args(["--tasks", "pick_red_cube, push_red_cube_right", "--out",
                            str(tmp_path), "--image-size", "224", "-n", "7"])
    cfg = bulk.config_from_args(args).resolved()
    assert cfg.tasks == ("pick_red_cube", "push_red_cube_right")
    assert (cfg.width, cfg.height, cfg.episodes, cfg.max_attempts) == (224, 224, 7, 24)
    default = bulk.config_from_args(bulk.parse_args(["--out", str(tmp_path)])).resolved()
    assert set(default.tasks) == set(TASKS)
    assert (default.width, default.height) == (640, 480)  # sim_node's camera (config/sim.yaml)
    assert (default.fps, default.max_skew) == (15, 0.05)  # recorder_node's (config/recorder.yaml)
    assert bulk.main(["--tasks", "no_such_task", "--out", str(tmp_path / "x")]) == 2


def test_split_seeds_are_disjoint_and_checked(tmp_path):
    stream = sp.train_seed_stream("pick_red_cube", 0)
    seeds = [next(stream) for _ in range(1000)]
    assert len(set(seeds)) == 1000 and max(seeds) < sp.EVAL_FIRST_SEED
    other = sp.train_seed_stream("pick_red_cube", 1)
    assert [next(other) for _ in range(5)] != seeds[:5]
    split = sp.SeedSplit()
    with pytest.raises(ValueError, match="evaluation seed"):
        split.add("pick_red_cube", sp.EVAL_FIRST_SEED + 3, saved=True)
    split.add("pick_red_cube", 4, saved=True)
    split.add("pick_red_cube", 9, saved=False)
    sp.save_split(tmp_path, split)
    assert sp.load_split(tmp_path) == split
    assert json.loads((tmp_path / sp.SPLIT_PATH).read_text())["eval"]["first_seed"] == 100000
    split.train["pick_red_cube"].append(4)
    with pytest.raises(ValueError, match="twice"):
        split.check()
    assert math.isfinite(bulk.BulkResult({}, {}, 0, 0.0, 0.0, {}).episodes_per_minute)


@pytest.mark.slow
def test_workers_record_the_same_dataset(tmp_path):
    import pyarrow.parquet as pq

    tables = []
    for workers in (1, 2):
        cfg = bulk.BulkConfig(tmp_path / f"w{workers}", ["pick_red_cube", "push_red_cube_right"],
                              episodes=2, width=64, height=48, workers=workers, progress=False)
        bulk.record_bulk(cfg)
        assert sp.load_split(cfg.root).episodes == sp.load_split(tmp_path / "w1").episodes
        tables.append([pq.read_table(p).to_pylist() for p in
                       sorted((cfg.root / "data").rglob("*.parquet"))])
    assert tables[0] == tables[1]


def test_with_depth_the_wrist_camera_records_its_depth_too(tmp_path):
    cfg = bulk.BulkConfig(tmp_path / "wrist_depth", ["pick_red_cube"], episodes=1, width=64,
                          height=48, fps=FPS,
                          wrist=True, depth=True, progress=False).resolved()
    bulk.record_bulk(cfg)
    r = DatasetReader(cfg.root)
    assert r.depth_cameras == {"scene_depth": (48, 64), "wrist_depth": (48, 64)}
    ep = r.episode(0, depth=True)
    scene, wrist = ep.depth["scene_depth"], ep.depth["wrist_depth"]
    assert wrist.dtype == np.uint16 and wrist.shape == scene.shape
    # the hand's camera sees the table far closer than the scene camera does
    assert np.median(wrist[0]) < np.median(scene[0])
