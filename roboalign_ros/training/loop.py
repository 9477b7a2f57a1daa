"""The one training loop of the gradient stages (``sft``, ``head``, ``ground``).

A stage builds what is its own (its model, its batches, its loss, its evaluation, the files of
its checkpoints) and hands them to :class:`Trainer`, which does the rest the same way for every
stage and every process count:

* ``accelerate.Accelerator`` (mixed precision on CUDA, gradient accumulation), seeding, the
  output directory and the checkpoint to resume from (``run.resume``);
* the optimizer step: backward, the gradients of modules trained beside the wrapped model
  averaged over processes, clipping, and a learning-rate schedule that is a function of the
  optimizer step alone (the same curve on 1 or N processes);
* evaluation every ``eval_every`` steps and at the last one;
* checkpoints ``checkpoint-<step>/``: the stage's files, the accelerate state, the history so
  far, ``COMPLETE`` last; resume from one restores all of it, so a resumed run continues the
  uninterrupted one;
* logging: ``<stage>_history.json`` (one row per optimizer step: the loss and the stage's
  metrics, averaged over micro-batches and processes, ``lr``, ``step_time``, ``seconds``),
  TensorBoard under ``tb/`` and a tqdm bar, on the main process only.

Under N processes a stage's ``batch_size`` is per process (the global batch is N times it) and
each process trains on its share of every global batch.

Sketch of a stage::

    trainer = Trainer("mystage", cfg.run)
    model = build(...).to(trainer.device)
    total, _ = trainer.total_steps(batches_per_epoch, cfg.epochs, cfg.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    model = trainer.prepare(model, opt, total, lr_scheduler="cosine", max_grad_norm=1.0)
    trainer.fit(itertools.count(trainer.step), lambda step: my_loss(model, step), total,
                save=my_save)
    return trainer.finish(my_save)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .common import (
    FINAL_DIR,
    TRAINER_STATE,
    cpu_processes,
    mark_complete,
    mixed_precision,
    progress,
    resolve_resume,
    rotate_checkpoints,
    seed_everything,
    summary_writer,
)

log = logging.getLogger(__name__)
HISTORY = "history.json"  # in a checkpoint's trainer_state/: the rows up to its step


def lr_schedule(optimizer, name: str, warmup_steps: int, total_steps: int):
    """The ``name`` schedule of transformers; "constant" keeps its warmup."""
    from transformers import get_scheduler

    return get_scheduler("constant_with_warmup" if name == "constant" else name, optimizer,
                         num_warmup_steps=warmup_steps, num_training_steps=max(total_steps, 1))


class Trainer:
    """One stage's training run under accelerate (see the module docstring).

    Construct it first: it seeds, and :attr:`resume` (the checkpoint this run continues from,
    None for a fresh run) tells the stage where to load its model from. Then
    :meth:`prepare`, :meth:`fit` and :meth:`finish`.
    """

    def __init__(self, stage: str, run, gradient_accumulation_steps: int = 1):
        from accelerate import Accelerator

        self.stage, self.run = stage, run
        self.acc = Accelerator(cpu=cpu_processes(), mixed_precision=mixed_precision(run),
                               gradient_accumulation_steps=gradient_accumulation_steps)
        seed_everything(run.seed)
        self.out_dir = Path(run.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume: Path | None = resolve_resume(run)
        self.step = 0
        self.history: list[dict] = []
        self.extra: list[torch.nn.Module] = []
        self._tb = None

    @property
    def device(self) -> torch.device:
        """This process's device."""
        return self.acc.device

    @property
    def num_processes(self) -> int:
        """Processes training together."""
        return self.acc.num_processes

    @property
    def rank(self) -> int:
        """This process's index (0 = main)."""
        return self.acc.process_index

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and logs."""
        return self.acc.is_main_process

    def total_steps(self, batches_per_epoch: int, epochs: float,
                    max_steps: int = 0) -> tuple[int, int]:
        """``(total optimizer steps, steps per epoch)``.

        An epoch is ``batches_per_epoch`` per-process batches shared by the processes
        (accelerate gives each a ``ceil(batches / N)`` share), ``gradient_accumulation_steps``
        of them a step. ``max_steps > 0`` overrides ``epochs``.
        """
        per_process = math.ceil(batches_per_epoch / self.num_processes)
        per_epoch = max(1, math.ceil(per_process / self.acc.gradient_accumulation_steps))
        return max_steps or max(1, math.ceil(epochs * per_epoch)), per_epoch

    def prepare(self, model, optimizer, total_steps: int, *, loader=None, extra=(),
                lr_scheduler: str = "cosine", warmup_ratio: float = 0.0,
                max_grad_norm: float = 0.0, clip=None):
        """Wrap for the processes (DDP / FSDP / DeepSpeed), schedule, restore :attr:`resume`.

        ``model``: the module trained through its forward (wrapped; the one gradient
        accumulation syncs). ``loader``: a DataLoader to shard over the processes.
        ``extra``: modules trained beside it outside its forward (probes): the loop averages
        their gradients over processes itself and keeps their state in checkpoints.
        ``clip``: the parameters whose norm ``max_grad_norm`` clips (default: all the
        optimizer trains). Returns the prepared model, and the loader when one is given.
        """
        acc, n = self.acc, self.num_processes
        # a prepared scheduler steps once per process per optimizer step (accelerate counts
        # per-process batches), so its length is in process-steps: the learning rate is then a
        # function of the optimizer step alone, whatever the number of processes
        sched = lr_schedule(optimizer, lr_scheduler, int(warmup_ratio * total_steps) * n,
                            total_steps * n)
        # one prepare call: DeepSpeed and FSDP need the model, optimizer (and loader) together
        objs = acc.prepare(model, optimizer, *([] if loader is None else [loader]), sched)
        self.model, self.optimizer, self.scheduler = objs[0], objs[1], objs[-1]
        self.extra = [m.to(acc.device) for m in extra]
        self.max_grad_norm = max_grad_norm
        self.clip = list(clip) if clip is not None else [
            p for group in self.optimizer.param_groups for p in group["params"]]
        if self.resume is not None:
            self._restore(self.resume)
        return self.model if loader is None else (self.model, objs[2])

    # ------------------------------------------------------------------------ the loop
    def fit(self, batches: Iterable, loss: Callable, total_steps: int, *,
            save: Callable[[Path], None], evaluate: Callable[[int], dict] | None = None,
            eval_every: int = 0) -> list[dict]:
        """Train from :attr:`step` to ``total_steps``; returns the history (all rows).

        ``batches``: micro-batches from the current step on (``gradient_accumulation_steps``
        of them make a step; the end of a prepared DataLoader ends one too). ``loss(batch)``
        -> ``(loss tensor, {metric: number})``. ``evaluate(step)`` -> ``{metric: number}``
        (added to the step's row), on every process, every ``eval_every`` steps (0 = never)
        and at the last.
        ``save(path)``: the stage's files of a checkpoint (called on every process: it writes
        on the main one). A last checkpoint is written at the end.
        """
        acc, run = self.acc, self.run
        start = self.step
        self._tb = self._tb or summary_writer(run, self.is_main)
        bar = progress(total=total_steps, desc=self.stage, enable=run.progress and self.is_main,
                       initial=self.step)
        micro: list[dict] = []
        t0 = t_step = time.perf_counter()
        for batch in batches if self.step < total_steps else ():
            with acc.accumulate(self.model):
                with acc.autocast():
                    value, metrics = loss(batch)
                acc.backward(value)
                if acc.sync_gradients:
                    self._average_extra_gradients()
                    if self.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.clip, self.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            micro.append({"loss": float(value.detach()), **metrics})
            if not acc.sync_gradients:
                continue
            self.step += 1
            row = {"step": self.step, **self._mean(micro),
                   "lr": self.scheduler.get_last_lr()[0]}
            micro = []
            now = time.perf_counter()
            row["step_time"], row["seconds"], t_step = now - t_step, now - t0, now
            if not math.isfinite(row["loss"]):
                raise RuntimeError(f"{self.stage}: loss is {row['loss']} at step {self.step}")
            evaluated = {}
            if evaluate is not None and eval_every and (
                    self.step % eval_every == 0 or self.step == total_steps):
                evaluated = evaluate(self.step)
                row.update(evaluated)
            self.history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4g}")
            self._log(row, evaluated)
            if run.save_every and self.step % run.save_every == 0 and self.step < total_steps:
                self.checkpoint(save)
            if self.step >= total_steps:
                break
        bar.close()
        if self.step > start or self.resume is None:
            self.checkpoint(save)
        return self.history

    def finish(self, save: Callable[[Path], None], name: str = FINAL_DIR) -> Path:
        """Write the final ``<output_dir>/<name>`` (replacing it) with ``save`` and the history."""
        final = self.out_dir / name
        if self.is_main and final.exists():
            shutil.rmtree(final)
        self.acc.wait_for_everyone()
        save(final)
        if self.is_main:
            (self.out_dir / f"{self.stage}_history.json").write_text(json.dumps(self.history))
            if self._tb is not None:
                self._tb.close()
        self.acc.wait_for_everyone()
        return final

    # ------------------------------------------------------------------------ checkpoints
    def checkpoint(self, save: Callable[[Path], None]) -> Path:
        """Write ``checkpoint-<step>``: the stage's files, the accelerate state, the history.

        Marked complete last, so resuming never picks a half-written checkpoint. Besides the
        main process, each process writes only its own random state (accelerate's
        ``random_states_<rank>.pkl``).
        """
        from safetensors.torch import save_file

        path = self.out_dir / f"checkpoint-{self.step}"
        save(path)
        state = path / TRAINER_STATE
        self.acc.save_state(str(state))
        if self.is_main:
            for i, module in enumerate(self.extra):
                save_file({k: v.detach().contiguous().cpu()
                           for k, v in module.state_dict().items()},
                          str(state / f"extra_{i}.safetensors"))
            (state / "step.json").write_text(json.dumps({"step": self.step}))
            (state / HISTORY).write_text(json.dumps(self.history))
            mark_complete(path, {"stage": self.stage, "step": self.step})
            rotate_checkpoints(self.out_dir, self.run.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def _restore(self, resume: Path) -> None:
        from safetensors.torch import load_file

        state = resume / TRAINER_STATE
        self.acc.load_state(str(state))
        self.step = json.loads((state / "step.json").read_text())["step"]
        for i, module in enumerate(self.extra):
            f = state / f"extra_{i}.safetensors"
            if f.is_file():  # checkpoints of before the loop kept no probe: it starts fresh
                module.load_state_dict(load_file(str(f), device=str(self.device)))
        if (state / HISTORY).is_file():
            rows = json.loads((state / HISTORY).read_text())
            self.history = [r for r in rows if r["step"] <= self.step]
        if self.is_main:
            log.info("%s: resumed from %s at step %d", self.stage, resume, self.step)

    # ------------------------------------------------------------------------ helpers
    def _average_extra_gradients(self) -> None:
        # the wrapped model's gradients are averaged by DDP; modules outside it by hand
        if self.num_processes == 1:
            return
        for module in self.extra:
            for p in module.parameters():
                if p.grad is not None:
                    p.grad = self.acc.reduce(p.grad, "mean")

    def _mean(self, rows: list[dict]) -> dict:
        """Metrics of a step: the mean over its micro-batches and over processes."""
        if len(rows) == 1 and self.num_processes == 1:
            return dict(rows[0])
        keys = list(rows[0])
        values = torch.tensor([[float(r[k]) for k in keys] for r in rows],
                              dtype=torch.float64).mean(dim=0)
        if self.num_processes > 1:
            values = self.acc.reduce(values.to(self.device), "mean").cpu()
        return dict(zip(keys, values.tolist()))

    def _log(self, row: dict, evaluated: dict) -> None:
        if self._tb is None:
            return
        logged = row if self.step % self.run.log_every == 0 else evaluated
        for k, v in logged.items():
            if k != "step":
                self._tb.add_scalar(f"{self.stage}/{k}", v, self.step)
