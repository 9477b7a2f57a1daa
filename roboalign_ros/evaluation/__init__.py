"""Evaluation trials (ROS-free): plans, the trial state machine, results and reports."""

from roboalign_ros.evaluation.plan import PlanError, TaskSpec, TrialPlan, load_plan, parse_plan
from roboalign_ros.evaluation.report import summarize, wilson_interval, write_report
from roboalign_ros.evaluation.results import ResultsStore, load_records
from roboalign_ros.evaluation.session import EvalSession, SessionConfig, TrialState

__all__ = ["EvalSession", "PlanError", "ResultsStore", "SessionConfig", "TaskSpec", "TrialPlan",
           "TrialState", "load_plan", "load_records", "parse_plan", "summarize",
           "wilson_interval", "write_report"]
