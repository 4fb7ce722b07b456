"""Trainers for both stages: one validation pass before any work, safe checkpoint loading and saving, a config.yml
that records what was really built, and faults while running (a failed save, Ctrl-C, a diverging run) reported in
one line."""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from ednerf_ns import timeline
from ednerf_ns.accel.step_graph import StepGraphRunner
from ednerf_ns.checkpoint import (
    find_checkpoint,
    load_verified,
    locate_source_run,
    read_checkpoint,
    read_run_config,
    require_source_run,
    save_atomic,
    source_models_folder,
)
from ednerf_ns.cli_options import command_line_options
from ednerf_ns.edit_pipeline import default_edit_pipeline, merge_dataparser, merge_source_config
from ednerf_ns.errors import (
    ArgumentError,
    Interrupted,
    UserError,
    check_writable_folder,
    command,
    first_line,
    one_line_errors,
    os_error_line,
    set_command,
    warn,
)
from ednerf_ns.ops.health import StepHealth, all_finite
from ednerf_ns.validate import check_dataset, check_options, check_same_cameras, check_same_diffusion_model

TRAIN_STEPS = 5000
"""Length of an ed-nerf run (the method's max_num_iterations)."""
EDIT_STEPS = 500
"""Length of an ed-nerf-edit run."""


@dataclass
class EdNerfTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig; `--load-dir` resumes an ed-nerf run (loaded with weights_only=True)."""

    _target: type = field(default_factory=lambda: EdNerfTrainer)
    exit_after_save: bool = True
    """When ns-train started this run: end the process as soon as training has finished, the final checkpoint is
    saved and the logs are flushed, instead of waiting (1.5-3 s) for Python to tear down every module nerfstudio
    imported. Never with wandb or comet logging (they finish their uploads at exit) or the viewer kept open."""
    max_bad_steps: int = 20
    """Stop the run, in one line and without saving, after this many consecutive steps whose loss was NaN or
    infinite (a diverged run does not recover). Read on the host every --logging.steps-per-log steps (or every
    max-bad-steps, if fewer), so training never waits for the GPU to check."""

    def validate(self) -> None:
        """The validation pass: every input this stage reads that can be checked without loading a model."""
        check_options(self)
        if self.load_dir is not None:  # resuming (or, for an edit, the source run): a checkpoint must be there
            find_checkpoint(self.load_dir, self.load_step)
        if self.load_checkpoint is not None and not Path(self.load_checkpoint).expanduser().is_file():
            raise ArgumentError(f"--load-checkpoint '{self.load_checkpoint}' does not exist; pass a step-*.ckpt file")
        check_dataset(self.pipeline.datamanager)
        check_writable_folder(self.output_dir, "--output-dir")

    def save_config(self) -> None:
        # ns-train saves config.yml (creating the run folder) before it builds anything: validate first, so a
        # mistyped path fails in one line without leaving an empty run behind.
        set_command(self.method_name or "ed-nerf", method=True)
        with one_line_errors():
            self.validate()
            super().save_config()


class EdNerfTrainer(Trainer):
    """Trainer that rewrites config.yml after setup (so `implementation: auto` is saved as what was built), resumes
    from `--load-dir` without nerfstudio's unsafe `torch.load`, and on CUDA replays steps from CUDA graphs."""

    config: EdNerfTrainerConfig
    step_graph: StepGraphRunner | None = None
    """Runs the training steps (see ednerf_ns.accel.step_graph); None = nerfstudio's eager train_iteration."""
    health: StepHealth | None = None
    """Device-side count of non-finite steps (see ednerf_ns.ops.health)."""
    completed_step: int | None = None
    """The last training step that finished (None before the first)."""
    diffusion_parts: tuple[str, ...] = ("vae",)
    """The parts of the diffusion model this stage uses, loaded in the background while the dataset is read."""

    def setup(self, test_mode="val") -> None:
        timeline.mark("setup_start")
        set_command(self.config.method_name or "ed-nerf", method=True)
        with self.faults_in_one_line():
            if test_mode == "val":
                self.prefetch_diffusion()
            super().setup(test_mode=test_mode)
            if self.local_rank == 0:
                TrainerConfig.save_config(self.config)  # validated already: only rewrite what was built
            cameras = getattr(self.pipeline.datamanager, "train_cameras", None)
            if cameras is not None:
                self.pipeline.model.cache_training_rays(cameras)
            self.step_graph = self._make_step_graph()
            self.health = StepHealth(self.device)
            where = [TrainingCallbackLocation.AFTER_TRAIN_ITERATION]
            self.callbacks.append(TrainingCallback(where, self._after_step, update_every_num_iters=1))
            after = [TrainingCallbackLocation.AFTER_TRAIN]  # after the final save, before the viewer's wait
            self.callbacks.append(TrainingCallback(after, self._after_train_done, update_every_num_iters=1))
        timeline.mark("setup_done")

    def train(self) -> None:
        with self.faults_in_one_line():
            CONSOLE.log("Training; Ctrl-C stops it and saves the last step")
            super().train()
        # (a viewer kept open after training never returns here: it serves until Ctrl-C)
        wandb_or_comet = self.config.is_wandb_enabled() or self.config.is_comet_enabled()
        if self.config.exit_after_save and self.world_size == 1 and started_by_ns_train() and not wandb_or_comet:
            end_process_now(self.config.logging)

    def prefetch_diffusion(self) -> None:
        """Start reading the diffusion model's files (`diffusion_parts`) in a background thread: loading them then
        overlaps reading the dataset, encoding its latents and loading the source run."""
        from ednerf_ns.models2d.diffusion import get_diffusion

        model = self.config.pipeline.model
        name, dtype = getattr(model, "diffusion_model", None), getattr(model, "diffusion_dtype", "auto")
        if name:
            get_diffusion(name, self.device, dtype).prefetch(self.diffusion_parts)

    # ------------------------------------------------------------------ faults
    @contextmanager
    def faults_in_one_line(self) -> Iterator[None]:
        """Bad input, failed writes and Ctrl-C end the command with one line (see ednerf_ns.errors)."""
        try:
            with one_line_errors():
                yield
        except KeyboardInterrupt:
            with one_line_errors():
                self._stop_interrupted()

    def _after_step(self, step: int) -> None:  # nerfstudio passes `step` by name
        if self.completed_step is None:
            self._synchronize()  # the first step's own time (capture, lazy loads), not the queue behind it
            timeline.mark("first_step")
        self.completed_step = step
        every = max(1, min(self.config.logging.steps_per_log, self.config.max_bad_steps))
        if (step + 1) % every == 0:
            self.check_health(step)

    def _synchronize(self) -> None:
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize()

    def _after_train(self) -> None:
        self._synchronize()
        timeline.mark("steps_done")
        super()._after_train()

    def _after_train_done(self, step: int) -> None:  # nerfstudio passes `step` by name
        timeline.mark("saved")
        if self.local_rank == 0:
            timeline.write(self.base_dir)

    def check_health(self, step: int, saving: bool = False) -> None:
        """Read the non-finite step counters (one synchronisation): report new ones, stop a diverged run. Before a
        save, also check that every parameter is finite: a NaN checkpoint is never written."""
        if self.health is None:
            return
        total, consecutive = self.health.read()
        if total > self.health.reported:
            warn(f"{total - self.health.reported} more training steps had a NaN or infinite loss ({total} so far)")
            writer.put_scalar(name="Non-finite steps", scalar=total, step=step)
            self.health.reported = total
        diverged = consecutive >= self.config.max_bad_steps
        if not diverged and (consecutive > 0 or saving):
            diverged = not all_finite(self.pipeline.model)
        if diverged:
            raise UserError(
                f"training diverged at step {step} ({consecutive} steps in a row had a NaN or infinite loss, {total} "
                f"in all) and the model is not saved (last good checkpoint: {self._latest_checkpoint()}); lower the "
                "learning rates (--optimizers.fields.optimizer.lr ...) and train again"
            )

    def _latest_checkpoint(self) -> str:
        try:
            path, _ = find_checkpoint(self.checkpoint_dir, None)
        except UserError:
            return "none"
        return f"'{path}'"

    def _stop_interrupted(self) -> None:
        """Ctrl-C: save the last finished step if the model is sound, say how to go on, exit 130."""
        self.shutdown()
        step = self.completed_step
        if step is None or getattr(self, "pipeline", None) is None:
            line = "interrupted before the first training step; nothing was saved"
        elif not all_finite(self.pipeline.model):
            line = (
                f"interrupted after step {step}; not saved: the model is no longer finite (last good checkpoint: "
                f"{self._latest_checkpoint()}); lower the learning rates and train again"
            )
        else:
            path = self.save_checkpoint(step, check=False)
            line = f"interrupted after step {step}; saved '{path}'; {self.resume_hint()}"
        print(f"{command()}: {line}", file=sys.stderr, flush=True)
        raise Interrupted(line)

    def resume_hint(self) -> str:
        return f"resume with: ns-train {self.config.method_name} --load-dir '{self.checkpoint_dir}' <same options>"

    def save_checkpoint(self, step: int, check: bool = True) -> Path:  # type: ignore[override]
        """nerfstudio's checkpoint, written atomically (see checkpoint.save_atomic); never a NaN model; a failed
        save is one line and keeps the earlier checkpoints."""
        if check:
            self.check_health(step, saving=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = {
            "step": step,
            "pipeline": self.pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        try:
            save_atomic(state, path)
        except Exception as exc:
            kept = f"the earlier checkpoints are kept, latest: {self._latest_checkpoint()}"
            raise UserError(save_error_line(exc, f"could not save checkpoint '{path}'", kept)) from exc
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("step-*.ckpt"):
                if old != path:
                    old.unlink()
        return path

    def _make_step_graph(self) -> StepGraphRunner | None:
        model = self.pipeline.model
        if not getattr(model.config, "step_cuda_graph", False) or not self.device.startswith("cuda"):
            return None
        unsupported = [
            reason
            for reason, present in (
                ("mixed precision", self.mixed_precision),
                ("gradient accumulation", any(n != 1 for n in self.gradient_accumulation_steps.values())),
                ("--logging.log-gradients", self.config.log_gradients),
                ("several GPUs", self.world_size > 1),
            )
            if present
        ]
        if unsupported:
            CONSOLE.log(f"Training steps run eagerly (no CUDA graph with {', '.join(unsupported)})")
            return None
        return StepGraphRunner(name=f"{self.config.method_name} step")

    def train_iteration(self, step: int):
        runner = self.step_graph
        if runner is None:
            out = super().train_iteration(step)
        else:
            with runner.stream_scope():
                out = self._graph_train_iteration(runner, step)
                self.health.record(out[0])  # type: ignore[union-attr]
                return out
        self.health.record(out[0])  # type: ignore[union-attr]
        return out

    def _graph_train_iteration(self, runner: StepGraphRunner, step: int):
        # nerfstudio's train_iteration for this trainer's settings (no scaler, no accumulation), with the forward
        # and backward pass run by the step graph.
        groups = list(self.optimizers.parameters.keys())
        self.optimizers.zero_grad_some(groups)
        model = self.pipeline.model
        model.prepare_train_step()
        camera, batch = self.pipeline.datamanager.next_train(step)
        key, inputs = model.step_graph_inputs(camera, batch)
        if key is None:
            loss, loss_dict, metrics = loss_and_backward(model, model(camera), batch)
        else:

            def step_fn(static: dict[str, Tensor]):
                outputs, static_batch = model.step_graph_outputs(static)
                return loss_and_backward(model, outputs, static_batch)

            params = [p for group in self.optimizers.parameters.values() for p in group]
            loss, loss_dict, metrics = runner.run(key, inputs, step_fn, params)
            model.after_step_graph(key)
        self.optimizers.optimizer_scaler_step_some(self.grad_scaler, groups)
        self.optimizers.scheduler_step_all(step)
        return loss, loss_dict, metrics

    def _load_checkpoint(self) -> None:
        if self.config.load_dir is None and self.config.load_checkpoint is None:
            CONSOLE.print("No checkpoint to load: training from scratch.")
            return
        if self.config.load_checkpoint is not None:
            path, step = self.config.load_checkpoint, None
        else:
            path, step = find_checkpoint(self.config.load_dir, self.config.load_step)
        state = read_checkpoint(path)
        step = int(state.get("step", step or 0))
        self.pipeline.model.update_to_step(step)
        load_verified(self.pipeline, state["pipeline"], f"checkpoint '{path}'")
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and self.config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        self._start_step = step + 1
        CONSOLE.print(f"Resuming from {path} (step {step})")


@dataclass
class EdNerfEditTrainerConfig(EdNerfTrainerConfig):
    """TrainerConfig of `ed-nerf-edit`: `--source-run` (or `--load-dir`) names the ed-nerf run to edit (it is never
    modified); `--resume` continues an interrupted edit."""

    _target: type = field(default_factory=lambda: EdNerfEditTrainer)
    source_run: Path | None = None
    """The ed-nerf (or ed-nerf-edit) run to edit: its folder, its config.yml or its nerfstudio_models folder. Same as
    --load-dir <run>/nerfstudio_models (with --load-step choosing the checkpoint)."""
    resume: Path | None = None
    """An interrupted ed-nerf-edit run (its folder or config.yml) to continue from its newest checkpoint, with its
    prompts, options, optimizers and step (other options given here still apply); writes a new run folder."""

    def validate(self) -> None:
        if self.resume is not None:
            self._adopt_resumed_run()
        if self.source_run is not None:
            load_dir = source_models_folder(self.source_run)
            if not load_dir.is_dir():
                raise UserError(
                    f"--source-run '{self.source_run}' is not an ed-nerf run (no nerfstudio_models folder there); "
                    f"pass the run's folder, e.g. outputs/<scene>/ed-nerf/<timestamp>"
                )
            if self.load_dir is not None and Path(self.load_dir).expanduser().resolve() != load_dir.resolve():
                raise UserError(
                    f"--source-run '{self.source_run}' and --load-dir '{self.load_dir}' name different runs"
                )
            self.load_dir = load_dir
        require_source_run(self.load_dir)
        source = locate_source_run(self.load_dir, self.load_step)
        source_data = getattr(source.config.pipeline.datamanager, "data", None)
        check_same_diffusion_model(self.pipeline.model.diffusion_model, source)
        if self.pipeline.datamanager.data is None:
            # No --data: edit the source run's scene (and name the run after it, as ns-train does).
            self.pipeline.datamanager.data = source_data
        else:
            check_same_cameras(source_data, self.pipeline.datamanager.data)
        super().validate()

    def _adopt_resumed_run(self) -> None:
        """Take the interrupted edit's pipeline (already merged with its source run), its source checkpoint and its
        newest checkpoint; options typed on this command line still win."""
        if self.load_checkpoint is not None and self.pipeline.source_checkpoint is not None:
            return  # adopted already (validate runs again when config.yml is saved)
        file, saved = read_run_config(self.resume, "--resume")
        if saved.method_name != "ed-nerf-edit" or saved.pipeline.source_checkpoint is None:
            raise UserError(f"--resume '{self.resume}' is not an ed-nerf-edit run; pass the edit run to continue")
        self.load_checkpoint, last_step = find_checkpoint(file.parent / "nerfstudio_models", None)
        given = command_line_options()
        defaults = default_edit_pipeline()

        def user_set(path: str, value, default) -> bool:
            return path in given if given is not None else value != default

        pipeline = copy.deepcopy(saved.pipeline)
        for section in ("model", "datamanager"):
            ours, theirs, default = (getattr(p, section) for p in (self.pipeline, pipeline, defaults))
            for f in dataclasses.fields(ours):
                value = getattr(ours, f.name)
                if f.name != "dataparser" and user_set(f"pipeline.{section}.{f.name}", value, getattr(default, f.name)):
                    setattr(theirs, f.name, copy.deepcopy(value))
        pipeline.datamanager.dataparser = merge_dataparser(
            self.pipeline.datamanager.dataparser,
            pipeline.datamanager.dataparser,
            defaults.datamanager.dataparser,
            given,
        )
        self.pipeline = pipeline
        checkpoint = Path(pipeline.source_checkpoint)
        self.load_dir, self.load_step = checkpoint.parent, int(checkpoint.stem.split("-")[-1])
        self.source_run = None
        if not user_set("max_num_iterations", self.max_num_iterations, EDIT_STEPS):
            self.max_num_iterations = saved.max_num_iterations
        if last_step + 1 >= self.max_num_iterations:
            raise UserError(
                f"--resume '{self.resume}' already finished {last_step + 1} of {self.max_num_iterations} steps; pass "
                f"--max-num-iterations with a larger total to edit further"
            )


class EdNerfEditTrainer(EdNerfTrainer):
    """Rebuilds the source run's pipeline from its config.yml, then edits it from step 0 with fresh optimizers
    (or, with --resume, continues an interrupted edit from its checkpoint)."""

    config: EdNerfEditTrainerConfig
    diffusion_parts = ("vae", "tokenizer", "text_encoder", "scheduler", "unet")

    def setup(self, test_mode="val") -> None:
        timeline.mark("setup_start")
        set_command(self.config.method_name or "ed-nerf-edit", method=True)
        with self.faults_in_one_line():
            self.config.validate()
            source = locate_source_run(self.config.load_dir, self.config.load_step)
            CONSOLE.log(f"Editing {source.checkpoint_path} (trained {source.step + 1} steps); it will not be modified")
            if self.config.resume is None:
                given = command_line_options()
                self.config.pipeline = merge_source_config(self.config.pipeline, source, default_edit_pipeline(), given)
            super().setup(test_mode=test_mode)  # saves config.yml again, now with the source's architecture

    def resume_hint(self) -> str:
        return f"continue this edit with: ns-train ed-nerf-edit --resume '{self.base_dir}'"

    def _load_checkpoint(self) -> None:
        if self.config.resume is not None:
            return super()._load_checkpoint()  # the interrupted edit's weights, optimizers and step
        # The pipeline loaded (and verified) the source weights itself; optimizers and step start fresh.
        CONSOLE.print("Edit starts at step 0 with fresh optimizers.")

    def train(self) -> None:
        # nerfstudio runs max_num_iterations steps *after* a resumed step; a resumed edit ends where the edit would
        # have ended uninterrupted (the count nerfstudio reads is the remainder while training runs).
        total = self._total_steps = self.config.max_num_iterations
        self.config.max_num_iterations = max(0, total - self._start_step)
        try:
            super().train()
        finally:
            self.config.max_num_iterations = total

    def train_iteration(self, step: int):
        self.pipeline.current_step = step  # type: ignore[attr-defined]
        return super().train_iteration(step)

    def save_checkpoint(self, step: int, check: bool = True) -> Path:  # type: ignore[override]
        path = super().save_checkpoint(step, check)
        if self.local_rank == 0:
            # Prompts and guidance may have changed in the viewer: config.yml records the ones in use (validated
            # at the start already: only rewritten here, not checked again).
            running = self.config.max_num_iterations
            self.config.max_num_iterations = getattr(self, "_total_steps", running)
            try:
                TrainerConfig.save_config(self.config)
            finally:
                self.config.max_num_iterations = running
        return path


def save_error_line(exc: BaseException, what: str, note: str) -> str:
    """One line for a failed write. torch.save reports the OSError of a full disk (or a file-size limit) as a
    RuntimeError from its C++ writer, with the OSError as the context: name that."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        line = os_error_line(cause, what, name_file=False)
        head, _, hint = line.partition("; ")
        return f"{head} ({note}); {hint}"
    return f"{what}: {first_line(exc, 160)} ({note}); check the disk and the output folder"


def loss_and_backward(model, outputs: dict, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Metrics, losses and the backward pass of one training step (what nerfstudio's pipeline and trainer do)."""
    metrics = model.get_metrics_dict(outputs, batch)
    loss_dict = model.get_loss_dict(outputs, batch, metrics)
    loss = functools.reduce(torch.add, loss_dict.values())
    loss.backward()
    return loss, loss_dict, metrics


def started_by_ns_train() -> bool:
    """True in the process of an `ns-train` command (its console script, or `python -m nerfstudio.scripts.train`);
    False when a trainer runs inside another program (tests, ednerf-demo, the benchmarks)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return Path(sys.argv[0]).name == "ns-train" or getattr(spec, "name", None) == "nerfstudio.scripts.train"


def end_process_now(logging_config) -> None:
    """What nerfstudio still does after training (print the profile), every event file closed and the output
    flushed, then exit 0 without the interpreter's teardown. Nothing is left to write by then."""
    import os

    from nerfstudio.utils import profiler

    profiler.flush_profiler(logging_config)
    for event_writer in writer.EVENT_WRITERS:
        tb = getattr(event_writer, "tb_writer", None)
        if tb is not None:
            tb.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
