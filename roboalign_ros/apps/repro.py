"""``roboalign repro mini``: RoboAlign's comparison in miniature, from demos to a report.

One command runs the whole pipeline on the sim, on a CPU or a GPU, stage by stage:

=============  ==================================================================================
record         scripted-expert demos of the tasks, headless (training seeds only)
rationale      the sim teacher's ReFineVLA rationales for every frame
backbone       a random ``mini`` Qwen2.5-VL, its tokenizer trained on the dataset's text
ground         localization pretraining of its vision on freshly rendered sim scenes
untrained      the policy before any training (configuration 1)
sft_plain      SFT without reasoning (empty think block)                    (configuration 2)
sft            SFT with teacher reasoning, L = L_action + 0.3 L_reasoning   (configuration 3)
align          RoboAlign GRPO on the FAST action tokens of the sft policy   (configuration 4)
head_*         flow-matching heads on the three frozen backbones
offline        FAST-token prefix accuracy on held-out frames (and the heads' action MSE)
evaluate       every configuration in the headless sim, on the same held-out seeds
graph          the best policy through the ROS graph, as a lab technician's trial runs
report         table, ``report.png``, ``summary.json``
=============  ==================================================================================

Every stage is resumable: a finished stage is recorded in ``<out>/repro_state.json`` with its
wall time and skipped on the next run; an interrupted training stage continues from its last
checkpoint, an interrupted evaluation from its last episode. ``<out>/repro.log`` says what ran.

    roboalign repro mini [--config config/repro/mini.yaml] [--out runs/mini] [--only STAGE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from roboalign_ros.apps.repro_plan import CONFIGURATIONS, LABELS, STAGES, TRAINS, evaluation_seeds
from roboalign_ros.training.stages import STAGES as TRAINING


@dataclasses.dataclass
class ReproConfig:
    """What ``roboalign repro mini`` runs (config/repro/mini.yaml documents every field)."""

    out: str = "runs/mini"
    tasks: list[str] = dataclasses.field(default_factory=lambda: [
        "pick_red_cube", "push_green_block_left", "place_red_cube_in_bowl"])
    episodes: int = 100
    record_workers: int = 2          # processes of the bulk recorder (one per core)
    width: int = 224
    height: int = 168
    split_seed: int = 0
    vocab_size: int = 1024
    seed: int = 0
    threads: int = 0                 # torch CPU threads (0: torch's default)
    # the config of each training stage (roboalign_ros.training.stages: every one has a field)
    rationale: str = TRAINING["rationale"].mini
    ground: str = TRAINING["ground"].mini
    sft: str = TRAINING["sft"].mini
    align: str = TRAINING["align"].mini
    head: str = TRAINING["head"].mini
    overrides: dict = dataclasses.field(default_factory=dict)   # stage -> ["key=value", ...]
    eval_seeds: int = 50             # held-out seeds per task for every configuration ...
    eval_seeds_slow: int = 5         # ... except these (tokens: one generation per chunk)
    eval_workers: int = 2            # processes of the headless evaluation (one per core)
    eval_max_rate: float = 5.0       # Hz cap on decisions, headless and graph (0: none)
    slow_configurations: list[str] = dataclasses.field(
        default_factory=lambda: ["untrained", "sft_tokens", "align_tokens"])
    configurations: list[str] = dataclasses.field(default_factory=lambda: list(CONFIGURATIONS))
    offline_frames: int = 40         # held-out frames for the FAST-token prefix accuracy
    graph_seeds: int = 50            # per task through the ROS graph (0: skip the stage)
    graph_camera_rate: float = 15.0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        from roboalign_ros.sim.tasks import TASKS

        unknown = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"tasks: unknown {unknown or '(none given)'}; known: {sorted(TASKS)}")
        for name in ("episodes", "eval_seeds", "width", "height", "vocab_size", "eval_workers",
                     "record_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.eval_max_rate >= 0:
            raise ValueError(f"eval_max_rate: must be >= 0 Hz (0: no cap), got "
                             f"{self.eval_max_rate}")
        bad = [c for c in self.configurations if c not in CONFIGURATIONS]
        if bad:
            raise ValueError(f"configurations: unknown {bad}; known: {list(CONFIGURATIONS)}")
        bad = [s for s in self.overrides if s not in STAGES]
        if bad:
            raise ValueError(f"overrides: unknown stages {bad}; stages: {list(STAGES)}")


class Repro:
    """Runs the stages of one reproduction directory, skipping those already done."""

    def __init__(self, cfg: ReproConfig, console=None):
        from rich.console import Console

        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = console or Console(highlight=False)
        self.state_path = self.out / "repro_state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    # ------------------------------------------------------------------ bookkeeping

    @property
    def dataset(self) -> Path:
        """The bulk-recorded dataset."""
        return self.out / "dataset"

    def path(self, *parts) -> Path:
        """A path under the reproduction directory."""
        return self.out.joinpath(*parts)

    def log(self, message: str) -> None:
        """One line to the console and to ``repro.log``."""
        from rich.text import Text

        self.console.print(message)
        with open(self.out / "repro.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {Text.from_markup(message).plain}\n")

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_path)

    def overrides(self, stage: str, *base: str) -> list[str]:
        """``base`` overrides of a training stage, then the config's own for it."""
        return [*base, *self.cfg.overrides.get(stage, [])]

    def train(self, stage: str, *base: str):
        """Run pipeline ``stage``'s training stage on its config with ``base`` overrides."""
        name = TRAINS[stage]
        return TRAINING[name].run(getattr(self.cfg, name), self.overrides(stage, *base))

    def run(self, stages=STAGES) -> dict:
        """Run ``stages`` in order (finished ones are skipped); returns the state."""
        if self.cfg.threads:
            import torch

            torch.set_num_threads(self.cfg.threads)
        for stage in stages:
            done = self.state.get(stage, {})
            if done.get("status") == "done":
                self.log(f"[dim]{stage}: done before ({done['seconds']:.0f} s), skipped[/dim]")
                continue
            self.log(f"[bold]{stage}[/bold]: running")
            t0 = time.perf_counter()
            result = getattr(self, f"stage_{stage}")()
            seconds = time.perf_counter() - t0
            self.state[stage] = {"status": "done", "seconds": seconds, "result": result,
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            self._save_state()
            self.log(f"{stage}: done in {seconds:.0f} s")
        self.print_times()
        return self.state

    def print_times(self) -> None:
        """The wall time of every stage (this run's and earlier runs')."""
        from rich.table import Table

        table = Table(title=f"roboalign repro mini: {self.out}")
        table.add_column("stage")
        table.add_column("wall time", justify="right")
        total = 0.0
        for stage in STAGES:
            s = self.state.get(stage)
            if s and s.get("status") == "done":
                total += s["seconds"]
                table.add_row(stage, f"{s['seconds'] / 60:.1f} min")
            else:
                table.add_row(stage, "-")
        table.add_row("[bold]total[/bold]", f"[bold]{total / 60:.1f} min[/bold]")
        self.console.print(table)

    # ------------------------------------------------------------------ stages

    def stage_record(self) -> dict:
        """Bulk expert demos (training seeds; evaluation seeds are held out)."""
        from roboalign_ros.recording.bulk import BulkConfig, record_bulk

        cfg = BulkConfig(tasks=list(self.cfg.tasks), episodes=self.cfg.episodes,
                         root=self.dataset, split_seed=self.cfg.split_seed,
                         width=self.cfg.width, height=self.cfg.height,
                         workers=self.cfg.record_workers).resolved()
        result = record_bulk(cfg)
        self.log(result.summary())
        short = {t: n for t, n in result.saved.items() if n < self.cfg.episodes}
        if short:
            raise RuntimeError(f"record: the expert solved too few episodes: {short}")
        return {"episodes": dict(result.saved)}

    def stage_rationale(self) -> dict:
        """Sim-teacher rationales (four sections per frame)."""
        return self.train("rationale", f"data.roots=[{self.dataset}]",
                          f"run.output_dir={self.path('rationale')}")

    def stage_backbone(self) -> dict:
        """A random mini backbone whose tokenizer knows the dataset's words."""
        from roboalign_ros.model.tiny import dataset_corpus, write_random_backbone

        path = write_random_backbone(self.path("backbone"), "mini",
                                     (self.cfg.height, self.cfg.width), self.cfg.seed,
                                     dataset_corpus(self.dataset), self.cfg.vocab_size)
        return {"backbone": path}

    def stage_ground(self) -> dict:
        """The random backbone learns where objects are, on rendered scenes (no demos)."""
        path = self.train("ground", f"data.roots=[{self.dataset}]",
                          f"run.output_dir={self.path('ground')}",
                          f"policy.backbone={self.path('backbone')}", f"run.seed={self.cfg.seed}")
        history = json.loads((self.path("ground") / "ground_history.json").read_text())
        held = [h["held_out_error_m"] for h in history if "held_out_error_m" in h]
        return {"backbone": str(path), "held_out_error_m": held[-1] if held else None}

    def _sft_base(self, output: str) -> list[str]:
        return [f"data.roots=[{self.dataset}]", f"run.output_dir={self.path(output)}",
                f"policy.backbone={self.path('ground', 'backbone')}", f"run.seed={self.cfg.seed}"]

    def stage_untrained(self) -> dict:
        """Configuration 1: the policy as built, before any training step."""
        from roboalign_ros.training.build import load_or_build_policy
        from roboalign_ros.training.config import load_config
        from roboalign_ros.training.samples import open_datasets
        from roboalign_ros.training.sft import SFTConfig

        # the random backbone, before grounding: nothing trained at all
        cfg = load_config(SFTConfig, self.cfg.sft, self.overrides(
            "sft", *self._sft_base("sft"), f"policy.backbone={self.path('backbone')}"))
        readers = open_datasets(cfg.data.roots)
        policy = load_or_build_policy(cfg.policy, readers, "cpu", cfg.run.seed)
        policy.save_pretrained(self.path("untrained"))
        return {"policy": str(self.path("untrained"))}

    def stage_sft_plain(self) -> dict:
        """Configuration 2's backbone: SFT on action tokens only (empty think block)."""
        return {"policy": str(self.train("sft_plain", *self._sft_base("sft_plain"),
                                         "reasoning=none",
                                         "policy.policy_overrides.reasoning_every=0"))}

    def stage_sft(self) -> dict:
        """Configuration 3's backbone: SFT with the teacher's reasoning (lambda_r = 0.3)."""
        return {"policy": str(self.train("sft", *self._sft_base("sft")))}

    def stage_align(self) -> dict:
        """Configuration 4's backbone: RoboAlign GRPO from the sft policy."""
        from roboalign_ros.training.align import reward_curve

        policy = self.train("align", f"data.roots=[{self.dataset}]",
                            f"run.output_dir={self.path('align')}",
                            f"policy.checkpoint={self.path('sft', 'policy')}",
                            f"run.seed={self.cfg.seed}")
        history = json.loads((self.path("align") / "align_history.json").read_text())
        curve = reward_curve(history)
        return {"policy": str(policy), "reward_first": curve[0] if curve else None,
                "reward_last": curve[-1] if curve else None}

    def _head(self, output: str, backbone: str, context: str) -> dict:
        policy = self.train(output, f"data.roots=[{self.dataset}]",
                            f"run.output_dir={self.path(output)}",
                            f"policy.checkpoint={self.path(backbone, 'policy')}",
                            f"context={context}", f"run.seed={self.cfg.seed}")
        metrics = json.loads((self.path(output) / "head_metrics.json").read_text())
        return {"policy": str(policy), "metrics": metrics}

    def stage_head_plain(self) -> dict:
        """The head on the SFT-without-reasoning backbone (context: empty think block)."""
        return self._head("head_plain", "sft_plain", "none")

    # Every head reads the same context, the prompt and the images (no reasoning text): the
    # comparison is then about what SFT (with or without reasoning) and GRPO taught the
    # backbone. Measured on the mini policy: a head trained on the teacher's rationale in its
    # context reaches 4x lower held-out MSE, but reads the positions from the text and fails in
    # closed loop, where the generated rationale's numbers are wrong.

    def stage_head_sft(self) -> dict:
        """The head on the SFT-with-reasoning backbone."""
        return self._head("head_sft", "sft", "none")

    def stage_head_align(self) -> dict:
        """The head on the aligned backbone."""
        return self._head("head_align", "align", "none")

    def stage_offline(self) -> dict:
        """FAST-token prefix accuracy of configurations 2-4 on held-out frames."""
        from roboalign_ros.apps.offline import token_prefix_accuracy

        out = {}
        for name, rel in (("sft_plain", "sft_plain/policy"), ("sft", "sft/policy"),
                          ("align", "align/policy")):
            out[name] = token_prefix_accuracy(self.path(rel), self.dataset,
                                              self.cfg.offline_frames, seed=self.cfg.seed)
            self.log(f"  {name}: FAST prefix accuracy {out[name]['prefix_accuracy']:.3f}, "
                     f"format {out[name]['format_rate']:.2f} on {out[name]['frames']} frames")
        return out

    def eval_seeds(self, name: str) -> list[int]:
        """The held-out seeds configuration ``name`` is evaluated on (the same for all)."""
        return evaluation_seeds(self.cfg, name)

    def stage_evaluate(self) -> dict:
        """Every configuration in the headless sim on the same held-out seeds."""
        from roboalign_ros.evaluation.headless import evaluate

        out = {}
        for name in self.cfg.configurations:
            rel, options = CONFIGURATIONS[name]
            res = evaluate(self.path(rel), self.cfg.tasks, self.eval_seeds(name),
                           self.path("eval", name), torch_threads=self.cfg.threads or 1,
                           workers=self.cfg.eval_workers, max_rate=self.cfg.eval_max_rate,
                           **options)
            out[name] = res.summary
            overall = res.summary.get("overall", {})
            self.log(f"  {name}: {overall.get('successes')}/{overall.get('trials')} "
                     f"({res.episodes_per_minute:.1f} episodes/min)")
        return out

    def best(self) -> str:
        """The head configuration with the highest overall success in the headless sim."""
        ev = self.state.get("evaluate", {}).get("result", {})
        heads = [c for c in ("align", "sft", "sft_plain") if c in ev]
        if not heads:
            raise RuntimeError("graph: run the evaluate stage first")
        return max(heads, key=lambda c: ev[c]["overall"]["success_rate"] or 0.0)

    def stage_graph(self) -> dict:
        """The best policy through sim_node + policy_node + executor_node + eval_node."""
        if not self.cfg.graph_seeds:
            return {"skipped": "graph_seeds: 0"}
        import yaml

        from roboalign_ros.apps import evaluate as eval_cli
        from roboalign_ros.evaluation.headless import eval_seeds
        from roboalign_ros.sim.tasks import TASKS

        best = self.best()
        model = self.path(CONFIGURATIONS[best][0])
        seeds = eval_seeds(self.cfg.graph_seeds)
        plan = {"name": f"repro_{best}", "policy": LABELS[best], "model": str(model),
                "notes": "roboalign repro mini: the headless evaluation's seeds, through ROS",
                "defaults": {"trials": len(seeds)},
                # the same episode length as the headless evaluation: the task's own
                "tasks": [{"task": t, "seeds": seeds, "time_limit": TASKS[t].episode_seconds}
                          for t in self.cfg.tasks]}
        plan_path = self.path("graph", "plan.yaml")
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
        # as the headless evaluation ran it (the heads' configurations: reasoning off)
        reasoning = CONFIGURATIONS[best][1].get("reasoning_every", 0)
        code = eval_cli.main(["run", "--plan", str(plan_path), "--model", str(model),
                              "--results-dir", str(self.path("graph")),
                              "--camera-size", str(self.cfg.width), str(self.cfg.height),
                              "--camera-rate", str(self.cfg.graph_camera_rate),
                              "--reasoning-every", str(reasoning),
                              "--max-rate", str(self.cfg.eval_max_rate),
                              "--log-dir", str(self.path("graph", "logs"))])
        if code:
            raise RuntimeError(f"graph: roboalign eval run exited with {code}")
        summary = json.loads(self.path("graph", plan["name"], "summary.json").read_text())
        return {"configuration": best, "summary": summary}

    def stage_report(self) -> dict:
        """Table, report.png and summary.json next to the offline figures."""
        from roboalign_ros.apps.repro_report import write_repro_report

        return write_repro_report(self, self.path("report"))


def load_repro_config(path: str | os.PathLike | None, **overrides) -> ReproConfig:
    """Read a repro YAML (unknown keys are errors) and apply ``overrides``."""
    import yaml

    data = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of options")
    data.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(ReproConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; valid: {sorted(fields)}")
    return ReproConfig(**data)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``roboalign repro``; ``func`` runs the pipeline."""
    ap.add_argument("preset", choices=("mini",))
    ap.add_argument("--config", default=None, help="default: config/repro/mini.yaml")
    ap.add_argument("--out", default=None, help="reproduction directory (default: runs/mini)")
    ap.add_argument("--only", nargs="+", choices=STAGES, default=None,
                    help="run only these stages (still skipping finished ones)")
    ap.add_argument("--redo", nargs="+", choices=STAGES, default=(),
                    help="forget that these stages finished, then run")
    ap.add_argument("--threads", type=int, default=None)
    ap.set_defaults(func=run_cli)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``roboalign repro mini``."""
    ap = argparse.ArgumentParser(prog="roboalign repro", description=__doc__.splitlines()[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def run_cli(a: argparse.Namespace) -> int:
    """``roboalign repro`` with parsed options."""
    from roboalign_ros.robot import package_path

    path = a.config or package_path("config", "repro", "mini.yaml")
    try:
        cfg = load_repro_config(path, out=a.out, threads=a.threads)
        repro = Repro(cfg)
    except ValueError as exc:
        print(f"roboalign repro: {exc}", file=sys.stderr)
        return 2
    for stage in a.redo:
        repro.state.pop(stage, None)
    stages: list[str] | tuple = a.only or STAGES
    try:
        repro.run(stages)
    except KeyboardInterrupt:
        repro.log("interrupted: run the same command again to continue")
        repro.print_times()
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
