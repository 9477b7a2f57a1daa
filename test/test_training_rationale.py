"""Teacher rationales: validation, append-only storage, retry / reject / resume."""

import json

import numpy as np
import pytest

from roboalign_ros.training.rationale import (
    RationaleStore,
    frames_to_annotate,
    run_rationale,
    validate_rationale,
)

GOOD = ("Sure! <Observation> A red cube lies right of a bowl.</Observation>\n"
        "<Situation Analysis> Nothing grasped yet.\n<Spatial Reasoning> The cube is 10 cm right "
        "of the gripper.\n<Task Planning>\n1. move right\n2. lower\n3. grasp\n4. lift")


def test_validate_accepts_and_canonicalises():
    v = validate_rationale(GOOD, min_plan_steps=3)
    assert v.ok, v.problems
    assert v.text.startswith("<Observation> A red cube") and "</Observation>" not in v.text
    assert v.sections["Task Planning"].count("\n") == 3
    assert "Sure!" not in v.text


@pytest.mark.parametrize("text,problem", [
    (GOOD.replace("<Spatial Reasoning>", ""), "missing section <Spatial Reasoning>"),
    ("<Task Planning> a <Observation> b <Situation Analysis> c <Spatial Reasoning> d",
     "out of order"),
    (GOOD.replace(" Nothing grasped yet.\n", ""), "<Situation Analysis> is empty"),
    (None, "not text"),
    ("random garbage", "missing section <Observation>"),
])
def test_validate_rejects(text, problem):
    v = validate_rationale(text)
    assert not v.ok and any(problem in p for p in v.problems), v.problems


def test_plan_step_count():
    assert not validate_rationale(GOOD, min_plan_steps=5).ok
    assert validate_rationale(GOOD, min_plan_steps=4).ok


def test_store_append_torn_line_and_lookup(tmp_path):
    store = RationaleStore(tmp_path)
    store.add(0, 0, "r00")
    store.add(0, 10, "r010")
    with open(store.path, "ab") as f:  # a crash in the middle of an append
        f.write(b'{"episode_index": 1, "frame_in')
    assert set(store.accepted()) == {(0, 0), (0, 10)}
    store.add(1, 5, "r15")  # starts on a fresh line
    assert set(store.accepted()) == {(0, 0), (0, 10), (1, 5)}
    assert store.lookup()[0] == [(0, "r00"), (10, "r010")]
    store.reject(2, 0, problems=["x"])
    assert store.done_keys() == {(0, 0), (0, 10), (1, 5), (2, 0)}
    assert store.done_keys(include_rejected=False) == {(0, 0), (0, 10), (1, 5)}


def test_frames_to_annotate():
    assert frames_to_annotate(20, 4) == [0, 6, 13, 19]
    assert frames_to_annotate(3, 10) == [0, 1, 2]
    assert frames_to_annotate(10, 0, stride=4) == [0, 4, 8]
    assert frames_to_annotate(0, 4) == []


class ScriptedTeacher:
    """Returns answers from a list (cycled); records every call."""

    name = "scripted"

    def __init__(self, answers, fail_after=None):
        self.answers, self.calls, self.fail_after = answers, [], fail_after

    def generate(self, images, prompt, seed=0):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        assert images and all(im.dtype == np.uint8 and im.ndim == 3 for im in images)
        assert "Instruction:" in prompt and "t+0.00s" in prompt
        self.calls.append((prompt, seed))
        return self.answers[(len(self.calls) - 1) % len(self.answers)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from roboalign_ros.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("rat") / "ds"
    write_synthetic_dataset(root, episodes=2, frames=12, cameras={"scene": (32, 40)}).close()
    return root


def _cfg(root, out, **kw):
    return {"data": {"roots": [str(root)]}, "run": {"output_dir": str(out), "progress": False},
            "frames_per_episode": 3, "future_steps": 8, "max_attempts": 3, **kw}


def test_happy_path_and_retry(dataset, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    teacher = ScriptedTeacher(["no sections here", GOOD])  # every frame: 1 reject, then ok
    counts = run_rationale(_cfg(root, tmp_path / "run"), teacher=teacher)
    assert counts == {"accepted": 6, "rejected": 0, "skipped": 0, "attempts": 12}
    recs = RationaleStore(root).accepted()
    assert len(recs) == 6 and all(r["attempts"] == 2 for r in recs.values())
    assert all(r["teacher"] == "scripted" for r in recs.values())
    # per-attempt seeds differ (so a sampling teacher gives a different answer on retry)
    assert len({s for _, s in teacher.calls}) == 12
    # dataset still opens, the reader ignores the extra meta files
    from roboalign_ros.data import DatasetReader

    assert len(DatasetReader(root)) == 2


def test_reject_after_bounded_attempts_and_resume(dataset, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    bad = ScriptedTeacher(["<Observation> only one section"])
    counts = run_rationale(_cfg(root, tmp_path / "r1", max_new=2), teacher=bad)
    assert counts["rejected"] == 2 and counts["attempts"] == 6 and len(bad.calls) == 6
    rej = RationaleStore(root).rejected()
    assert all("missing section" in r["problems"][0] for r in rej.values())
    # interrupted run: the teacher dies on its 3rd call; 2 frames were done before
    flaky = ScriptedTeacher([GOOD], fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_rationale(_cfg(root, tmp_path / "r2"), teacher=flaky)
    assert len(RationaleStore(root).accepted()) == 2
    # resume: rejected and accepted keys are skipped, nothing is asked twice
    good = ScriptedTeacher([GOOD])
    counts = run_rationale(_cfg(root, tmp_path / "r3"), teacher=good)
    assert counts["skipped"] == 4 and counts["accepted"] == 2 and len(good.calls) == 2
    lines = RationaleStore(root).path.read_text().splitlines()
    keys = [(json.loads(x)["episode_index"], json.loads(x)["frame_index"]) for x in lines]
    assert len(keys) == len(set(keys)) == 4
    # retry_rejected asks again for the 2 rejected frames only
    again = ScriptedTeacher([GOOD])
    counts = run_rationale(_cfg(root, tmp_path / "r4", retry_rejected=True), teacher=again)
    assert counts["accepted"] == 2 and len(again.calls) == 2


def test_tiny_random_teacher_is_rejected(dataset, tmp_path):
    """The tiny random HF model writes garbage: every frame is retried, then rejected."""
    import shutil

    from roboalign_ros.model.tiny import build_random_backbone

    model, processor = build_random_backbone("tiny", image_size=(56, 56))
    model.save_pretrained(tmp_path / "teacher")
    processor.save_pretrained(tmp_path / "teacher")
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    cfg = _cfg(root, tmp_path / "run", max_attempts=2, max_new=2, frames_per_episode=1,
               teacher={"path": str(tmp_path / "teacher"), "device": "cpu",
                        "dtype": "float32", "max_new_tokens": 8, "image_size": [56, 56]})
    counts = run_rationale(cfg)
    assert counts == {"accepted": 0, "rejected": 2, "skipped": 0, "attempts": 4}
    assert len(RationaleStore(root).rejected()) == 2


def test_rationale_config_errors(tmp_path):
    from roboalign_ros.training.config import ConfigError

    with pytest.raises(ConfigError, match="rationale.max_attempts"):
        run_rationale(_cfg(tmp_path, tmp_path / "o", max_attempts=0), teacher=ScriptedTeacher([]))
    with pytest.raises(ConfigError, match="prompt_template"):
        run_rationale(_cfg(tmp_path, tmp_path / "o", prompt_template="{nope}"),
                      teacher=ScriptedTeacher([]))
    with pytest.raises(ConfigError, match="teacher.path"):
        run_rationale(_cfg(tmp_path, tmp_path / "o"))
    with pytest.raises(ConfigError, match="not a readable dataset|not found"):
        run_rationale(_cfg(tmp_path / "missing", tmp_path / "o"), teacher=ScriptedTeacher([]))


def test_teacher_without_seed_argument(dataset, tmp_path):
    import shutil

    class Plain:
        def generate(self, images, prompt):
            return GOOD

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    counts = run_rationale(_cfg(root, tmp_path / "run", frames_per_episode=1), teacher=Plain())
    assert counts["accepted"] == 2
    assert all(r["teacher"] == "Plain" for r in RationaleStore(root).accepted().values())
