"""The sim teacher: rationales from recorded sim state (words match the geometry and the phase)."""

import numpy as np
import pytest

from roboalign_ros.data import DatasetWriter
from roboalign_ros.data import scene_state as ss
from roboalign_ros.model.reasoning import format_target, parse_generation
from roboalign_ros.training.config import ConfigError, load_config
from roboalign_ros.training.rationale import (
    SECTIONS,
    RationaleConfig,
    RationaleStore,
    run_rationale,
    validate_rationale,
)
from roboalign_ros.training.sim_teacher import SimTeacher, SimTeacherConfig, relation

OBJECTS = {"red_cube": (0.02, "box"), "green_block": (0.02, "box"),
           "yellow_cylinder": (0.03, "cylinder"), "blue_bowl": (0.0, "bowl")}
PICK = ("pregrasp", "descend", "close", "lift")
PLACE = PICK + ("carry", "lower", "release", "retreat")
TASKS = {
    "pick_red_cube": ("pick up the red cube", "pick", "red_cube", None, PICK + ("hold",)),
    "pick_yellow_cylinder": ("pick up the yellow cylinder", "pick", "yellow_cylinder", None,
                             PICK + ("hold",)),
    "place_red_cube_in_bowl": ("put the red cube in the blue bowl", "place", "red_cube",
                               "blue_bowl", PLACE),
    "stack_red_cube_on_green_block": ("stack the red cube on the green block", "stack",
                                      "red_cube", "green_block", PLACE),
    "push_green_block_left": ("push the green block to the left", "push", "green_block", None,
                              ("prepush", "descend", "push", "retreat")),
}
PHASES = ("done", "pregrasp", "descend", "close", "lift", "hold", "carry", "lower", "release",
          "retreat", "prepush", "push")
META = ss.SimMetadata(
    {n: {"label": n.replace("_", " "), "shape": shape, "rest_height": h}
     for n, (h, shape) in OBJECTS.items()},
    PHASES,
    {instr: ss.TaskInfo(name, instr, kind, obj, target,
                        (0.0, 1.0, 0.0) if kind == "push" else (0.0, 0.0, 0.0), 0.1, plan)
     for name, (instr, kind, obj, target, plan) in TASKS.items()})
BY_NAME = {t.name: t for t in META.tasks.values()}


def scene(tool=(0.35, 0.0, 0.2), gripper=1.0, held=None, **positions):
    """A SceneState with objects at default spots unless given (base frame, m)."""
    spots = {"red_cube": (0.40, 0.10, 0.02), "green_block": (0.45, -0.15, 0.02),
             "yellow_cylinder": (0.30, 0.20, 0.03), "blue_bowl": (0.35, -0.25, 0.0)}
    spots.update(positions)
    pose = np.eye(4)
    pose[:3, 3] = tool
    return ss.SceneState.from_poses(pose, gripper, {n: (np.array(p), 0.0, n == held)
                                                    for n, p in spots.items()})


def sections(text):
    v = validate_rationale(text, min_plan_steps=1)
    assert v.ok, (v.problems, text)
    return v.sections


def plan_steps(text):
    return [line for line in sections(text)["Task Planning"].splitlines() if line.strip()]


@pytest.mark.parametrize("offset,words", [
    ((0.0, 0.12, -0.08), "12 cm to the left of and 8 cm below"),
    ((0.0, -0.12, 0.08), "12 cm to the right of and 8 cm above"),
    ((0.05, 0.0, 0.0), "5 cm in front of"),
    ((-0.05, 0.03, 0.0), "3 cm to the left of and 5 cm behind"),
    ((0.01, -0.005, 0.015), ""),  # within min_offset_cm on every axis
])
def test_relation_words_follow_the_signs(offset, words):
    assert relation(offset, min_cm=2.0) == words


def test_relation_keeps_the_largest_components():
    assert relation((0.05, 0.20, -0.10), max_parts=2) == "20 cm to the left of and 10 cm below"


def test_spatial_words_match_the_geometry():
    teacher = SimTeacher(SimTeacherConfig(max_words=200))
    task = BY_NAME["pick_red_cube"]
    text = teacher.rationale(META, task, scene(tool=(0.40, -0.02, 0.10)), "pregrasp")
    assert "The red cube is 12 cm to the left of and 8 cm below the gripper." in text
    text = teacher.rationale(META, task, scene(tool=(0.40, 0.22, 0.10)), "pregrasp")
    assert "12 cm to the right of and 8 cm below the gripper" in text
    text = teacher.rationale(META, task, scene(tool=(0.30, 0.10, 0.00)), "pregrasp")
    assert "10 cm in front of and 2 cm above the gripper" in text
    # placing: where the bowl is seen from the cube, then from the gripper once it is held
    place = BY_NAME["place_red_cube_in_bowl"]
    text = teacher.rationale(META, place, scene(), "pregrasp")
    assert "The blue bowl is 35 cm to the right of, 5 cm behind and 2 cm below the red cube" in text
    held = scene(tool=(0.35, 0.0, 0.15), gripper=0.4, held="red_cube", red_cube=(0.35, 0.0, 0.15))
    text = teacher.rationale(META, place, held, "carry")
    assert "The blue bowl is 25 cm to the right of and 15 cm below the gripper." in text


def test_rationales_parse_into_the_four_sections():
    teacher = SimTeacher()
    text = teacher.rationale(META, BY_NAME["place_red_cube_in_bowl"], scene(), "pregrasp")
    parsed = parse_generation(format_target(text, [3, 1, 4]), num_action_tokens=8)
    assert parsed.format_ok and parsed.action_tokens == [3, 1, 4]
    secs = sections(parsed.reasoning)
    assert list(secs) == list(SECTIONS) and all(secs.values())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_names_its_object_and_the_plan_shrinks(name):
    task = BY_NAME[name]
    teacher = SimTeacher(SimTeacherConfig(max_words=400, distractors=0))
    label = META.label(task.obj)
    others = [META.label(o) for o in OBJECTS if o not in (task.obj, task.target)]
    lengths = []
    for phase in (*task.plan, "done"):
        text = teacher.rationale(META, task, scene(), phase)
        secs = sections(text)
        assert label in secs["Observation"] and label in text.split("<Task Planning>")[0]
        assert not any(o in text for o in others), (phase, text)
        if task.target:
            assert META.label(task.target) in secs["Observation"]
        lengths.append(len(plan_steps(text)))
    # one step per remaining phase, the current one first; "done" leaves one: stay still
    assert lengths == [*range(len(task.plan), 0, -1), 1]
    assert plan_steps(teacher.rationale(META, task, scene(), task.plan[0]))[0].startswith("1. ")


def test_grasp_state_words():
    teacher = SimTeacher()
    pick = BY_NAME["pick_red_cube"]
    assert "The gripper is open and holds nothing." in teacher.rationale(META, pick, scene(),
                                                                         "pregrasp")
    closed = teacher.rationale(META, BY_NAME["push_green_block_left"], scene(gripper=0.0),
                               "push")
    assert "The gripper is closed and holds nothing." in closed
    held = scene(gripper=0.43, held="red_cube", red_cube=(0.35, 0.0, 0.1))
    text = teacher.rationale(META, pick, held, "lift")
    assert "The gripper is closed and holds the red cube." in text
    assert "The red cube is in the gripper, 8 cm above the table." in text


def test_length_knob_bounds_every_rationale():
    for max_words in (60, 80):
        teacher = SimTeacher(SimTeacherConfig(max_words=max_words))
        for task in META.tasks.values():
            for phase in (*task.plan, "done"):
                text = teacher.rationale(META, task, scene(), phase)
                assert len(text.split()) <= max_words, text
                sections(text)
    # too tight a budget: the shortest text, still complete
    tight = SimTeacher(SimTeacherConfig(max_words=20)).rationale(
        META, BY_NAME["pick_red_cube"], scene(), "pregrasp")
    assert len(plan_steps(tight)) == 1 and len(sections(tight)) == 4
    # with room the whole remaining plan is there; with less the plan is cut, not dropped
    place = BY_NAME["place_red_cube_in_bowl"]
    assert len(plan_steps(SimTeacher(SimTeacherConfig(max_words=300)).rationale(
        META, place, scene(), "pregrasp"))) == 8
    assert len(plan_steps(SimTeacher().rationale(META, place, scene(), "pregrasp"))) >= 2


def test_push_progress_from_the_first_frame():
    teacher = SimTeacher(SimTeacherConfig(max_words=200))
    push = BY_NAME["push_green_block_left"]
    start = scene()
    now = scene(green_block=(0.45, -0.11, 0.02))
    assert "It has moved 4 of 10 cm left." in teacher.rationale(META, push, now, "push", start)
    done = scene(green_block=(0.45, -0.02, 0.02))
    assert "goal is reached" in teacher.rationale(META, push, done, "retreat", start)


def _sim_dataset(root):
    objects = list(OBJECTS)
    w = DatasetWriter.create(root, 10, ["j1", "gripper"], ["j1", "gripper"], {"scene": (16, 16)},
                             "sim_arm", extra_features=ss.scene_features(objects),
                             metadata={"sim": META.to_json()})
    task = BY_NAME["pick_red_cube"]
    w.start_episode(task.instruction, source="expert")
    for i, phase in enumerate(task.plan):
        w.add_frame(np.zeros(2), np.zeros(2), {"scene": np.zeros((16, 16, 3), np.uint8)},
                    timestamp=i / 10, extra={ss.ENV_STATE_KEY: scene().to_vector(),
                                             ss.PHASE_KEY: PHASES.index(phase)})
    w.save_episode(success=True)
    w.close()


def test_run_rationale_with_the_sim_teacher(tmp_path):
    _sim_dataset(tmp_path)
    cfg = {"data": {"roots": [str(tmp_path)]}, "run": {"output_dir": str(tmp_path / "run"),
                                                        "progress": False},
           "teacher": "sim", "frames_per_episode": 0}
    counts = run_rationale(cfg)
    assert counts["accepted"] == 5 and counts["rejected"] == 0
    records = RationaleStore(tmp_path).accepted()
    assert {r["teacher"] for r in records.values()} == {"sim"}
    assert "Moving above the red cube" in records[(0, 0)]["rationale"]
    assert "1. hold it up" in records[(0, 4)]["rationale"]
    assert run_rationale(cfg)["skipped"] == 5  # resumable like the MLLM teacher


def test_sim_teacher_needs_a_sim_dataset(tmp_path):
    w = DatasetWriter.create(tmp_path, 10, ["j1"], ["j1"], {"scene": (16, 16)}, "r")
    w.start_episode("pick up the red cube")
    w.add_frame([0.0], [0.0], {"scene": np.zeros((16, 16, 3), np.uint8)}, timestamp=0.0)
    w.save_episode()
    w.close()
    with pytest.raises(ConfigError, match="teacher: sim needs"):
        run_rationale({"data": {"roots": [str(tmp_path)]}, "teacher": "sim",
                       "run": {"output_dir": str(tmp_path / "run"), "progress": False}})


def test_config_teacher_sim():
    cfg = load_config(RationaleConfig, "config/training/mini/rationale.yaml")
    assert cfg.teacher == "sim" and cfg.sim.max_words == 60
    data = {"data": {"roots": ["x"]}}
    assert load_config(RationaleConfig, data, ["teacher=sim", "sim.max_words=80"]).sim.max_words \
        == 80
    with pytest.raises(ConfigError, match="rationale.teacher"):
        load_config(RationaleConfig, {**data, "teacher": "gemini"})
    with pytest.raises(ConfigError, match="rationale.sim.max_words"):
        load_config(RationaleConfig, {**data, "teacher": "sim", "sim": {"max_words": 3}})


def test_what_a_dataset_lacks_is_named_and_the_teacher_says_which(tmp_path, caplog):
    import json

    from roboalign_ros.data import DatasetReader
    from roboalign_ros.training.samples import dataset_gaps, open_datasets

    root = tmp_path / "sim"
    _sim_dataset(root)
    run_rationale({"data": {"roots": [str(root)]}, "teacher": "sim", "frames_per_episode": 0,
                   "run": {"output_dir": str(tmp_path / "run"), "progress": False}})
    assert dataset_gaps(DatasetReader(root)) == []
    info_path = root / "meta" / "info.json"   # as LeRobot's tools rewrite it: no block of ours
    info = json.loads(info_path.read_text())
    del info["roboalign"]
    info_path.write_text(json.dumps(info))
    (root / "meta" / "rationales.jsonl").unlink()
    with caplog.at_level("WARNING"):
        open_datasets([root])
    gaps = [r.getMessage() for r in caplog.records]
    assert any("no roboalign.sim" in g and str(root) in g for g in gaps), gaps
    assert any("no meta/rationales.jsonl" in g for g in gaps), gaps
    with pytest.raises(ConfigError, match=r"lacks roboalign\.sim in meta/info\.json"):
        run_rationale({"data": {"roots": [str(root)]}, "teacher": "sim",
                       "run": {"output_dir": str(tmp_path / "run2"), "progress": False}})
