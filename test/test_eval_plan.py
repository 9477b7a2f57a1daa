"""Trial plans: the shipped plans load; malformed plans fail with the field named."""

import pytest

from roboalign_ros.evaluation.plan import PlanError, load_plan, parse_plan
from roboalign_ros.robot import package_path


def base(**task):
    return {"name": "p", "tasks": [{"task": "pick_red_cube", **task}]}


def test_shipped_plans_are_valid():
    smoke = load_plan(package_path("config", "eval", "sim_smoke.yaml"))
    smoke.check_mode("sim")
    assert smoke.total <= 6 and all(t.time_limit <= 30 for t in smoke.tasks)
    assert smoke.tasks[0].instruction == "pick up the red cube"  # taken from the sim task
    real = load_plan(package_path("config", "eval", "real_example.yaml"))
    real.check_mode("real")
    with pytest.raises(PlanError, match=r"plan.tasks\[0\].task: required in sim mode"):
        real.check_mode("sim")


def test_defaults_seeds_and_slots():
    plan = parse_plan({"name": "p", "defaults": {"trials": 3, "time_limit": 5},
                       "seed_base": 100,
                       "tasks": ["pick_red_cube",
                                 {"task": "push_green_block_left", "trials": 2,
                                  "seeds": [7, 9], "instruction": "shove  the green block"}]})
    assert plan.total == 5
    a, b = plan.tasks
    assert (a.trials, a.time_limit, a.seed(2, plan.seed_base)) == (3, 5.0, 102)
    assert b.instruction == "shove the green block" and b.seed(1) == 9
    assert [(s.number, s.spec.id, s.task_trial) for s in plan.slots()][2:4] == [
        (3, "pick_red_cube", 2), (4, "push_green_block_left", 0)]


@pytest.mark.parametrize("data, field", [
    ({"tasks": [{"task": "pick_red_cube"}]}, r"plan\.name: required"),
    ({"name": "a b", "tasks": ["pick_red_cube"]}, r"plan\.name"),
    ({"name": "p"}, r"plan\.tasks: required"),
    ({"name": "p", "tasks": []}, r"plan\.tasks: required"),
    ({"name": "p", "tasks": ["pick_red_cube"], "trails": 3}, r"plan\.trails: unknown field"),
    (base(trials=0), r"plan\.tasks\[0\]\.trials: must be an integer >= 1, got 0"),
    (base(trials="3"), r"plan\.tasks\[0\]\.trials"),
    (base(time_limit=-1), r"plan\.tasks\[0\]\.time_limit: must be a number of seconds > 0"),
    (base(time_limit=float("nan")), r"plan\.tasks\[0\]\.time_limit"),
    (base(seeds=[1], trials=2), r"plan\.tasks\[0\]\.seeds: 1 seeds for 2 trials"),
    (base(seeds=[1, "x"]), r"plan\.tasks\[0\]\.seeds\[1\]: expected an integer"),
    (base(colour="red"), r"plan\.tasks\[0\]\.colour: unknown field"),
    ({"name": "p", "tasks": [{"trials": 2}]}, r"plan\.tasks\[0\]\.instruction: required"),
    ({"name": "p", "tasks": [{"task": "juggle"}]}, r"plan\.tasks\[0\]\.instruction: required, "
                                                    r"'juggle' is not a sim task"),
    ({"name": "p", "tasks": ["pick_red_cube", "pick_red_cube"]},
     r"plan\.tasks\[1\]\.id: duplicate 'pick_red_cube'"),
    ({"name": "p", "defaults": {"trials": 0}, "tasks": ["pick_red_cube"]},
     r"plan\.defaults\.trials"),
])
def test_errors_name_the_field(data, field):
    with pytest.raises(PlanError, match=field):
        parse_plan(data)


def test_sim_mode_needs_known_tasks(tmp_path):
    plan = parse_plan({"name": "p", "tasks": [{"task": "nope", "instruction": "do it"}]})
    plan.check_mode("real")
    with pytest.raises(PlanError, match=r"plan\.tasks\[0\]\.task: unknown sim task 'nope'"):
        plan.check_mode("sim")
    with pytest.raises(PlanError, match="mode: 'lab'"):
        plan.check_mode("lab")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(tmp_path / "bad.yaml")
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "missing.yaml")
