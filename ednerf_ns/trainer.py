"""Trainers for both stages: safe checkpoint loading, and a config.yml that records what was really built."""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from ednerf_ns.checkpoint import find_checkpoint, load_verified, read_checkpoint
from ednerf_ns.step_graph import StepGraphRunner


@dataclass
class EdNerfTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig; `--load-dir` resumes an ed-nerf run (loaded with weights_only=True)."""

    _target: type = field(default_factory=lambda: EdNerfTrainer)

    def validate(self) -> None:
        """Check the user's inputs that can be checked without loading anything."""
        from ednerf_ns.datamanager import check_dataset_path

        check_dataset_path(self.pipeline.datamanager)

    def save_config(self) -> None:
        # ns-train saves config.yml (creating the run folder) before it builds anything: validate first, so a
        # mistyped path fails in one line without leaving an empty run behind.
        self.validate()
        super().save_config()


class EdNerfTrainer(Trainer):
    """Trainer that rewrites config.yml after setup (so `implementation: auto` is saved as what was built), resumes
    from `--load-dir` without nerfstudio's unsafe `torch.load`, and on CUDA replays steps from CUDA graphs."""

    config: EdNerfTrainerConfig
    step_graph: StepGraphRunner | None = None
    """Runs the training steps (see ednerf_ns.step_graph); None = nerfstudio's eager train_iteration."""

    def setup(self, test_mode="val") -> None:
        super().setup(test_mode=test_mode)
        if self.local_rank == 0:
            self.config.save_config()
        cameras = getattr(self.pipeline.datamanager, "train_cameras", None)
        if cameras is not None:
            self.pipeline.model.cache_training_rays(cameras)
        self.step_graph = self._make_step_graph()

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
            return super().train_iteration(step)
        with runner.stream_scope():
            return self._graph_train_iteration(runner, step)

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
        from ednerf_ns.checkpoint import locate_source_run
        from ednerf_ns.errors import UserError

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
        if not (self.pipeline.model.prompt or "").strip():
            raise UserError('the target prompt is empty; pass --prompt "what the edited scene should show"')
        if self.load_dir is None:
            raise UserError(
                "ed-nerf-edit needs the run to edit: pass --source-run <ed-nerf run folder> "
                "(or --load-dir <run>/nerfstudio_models)"
            )
        source = locate_source_run(self.load_dir, self.load_step)
        if self.pipeline.datamanager.data is None:
            # No --data: edit the source run's scene (and name the run after it, as ns-train does).
            self.pipeline.datamanager.data = getattr(source.config.pipeline.datamanager, "data", None)
        super().validate()

    def _adopt_resumed_run(self) -> None:
        """Take the interrupted edit's pipeline (already merged with its source run), its source checkpoint and its
        newest checkpoint; options typed on this command line still win."""
        from ednerf_ns.checkpoint import find_checkpoint
        from ednerf_ns.cli_options import command_line_options
        from ednerf_ns.configs import ed_nerf_edit_trainer
        from ednerf_ns.edit_pipeline import merge_dataparser
        from ednerf_ns.errors import UserError
        from ednerf_ns.runs import read_run_config

        if self.load_checkpoint is not None and self.pipeline.source_checkpoint is not None:
            return  # adopted already (validate runs again when config.yml is saved)
        file, saved = read_run_config(self.resume, "--resume")
        if saved.method_name != "ed-nerf-edit" or saved.pipeline.source_checkpoint is None:
            raise UserError(f"--resume '{self.resume}' is not an ed-nerf-edit run; pass the edit run to continue")
        self.load_checkpoint, last_step = find_checkpoint(file.parent / "nerfstudio_models", None)
        given = command_line_options()
        defaults = ed_nerf_edit_trainer()

        def user_set(path: str, value, default) -> bool:
            return path in given if given is not None else value != default

        pipeline = copy.deepcopy(saved.pipeline)
        for section in ("model", "datamanager"):
            ours, theirs, default = (getattr(p, section) for p in (self.pipeline, pipeline, defaults.pipeline))
            for f in dataclasses.fields(ours):
                value = getattr(ours, f.name)
                if f.name != "dataparser" and user_set(f"pipeline.{section}.{f.name}", value, getattr(default, f.name)):
                    setattr(theirs, f.name, copy.deepcopy(value))
        pipeline.datamanager.dataparser = merge_dataparser(
            self.pipeline.datamanager.dataparser,
            pipeline.datamanager.dataparser,
            defaults.pipeline.datamanager.dataparser,
            given,
        )
        self.pipeline = pipeline
        checkpoint = Path(pipeline.source_checkpoint)
        self.load_dir, self.load_step = checkpoint.parent, int(checkpoint.stem.split("-")[-1])
        self.source_run = None
        if not user_set("max_num_iterations", self.max_num_iterations, defaults.max_num_iterations):
            self.max_num_iterations = saved.max_num_iterations
        if last_step + 1 >= self.max_num_iterations:
            raise UserError(
                f"--resume '{self.resume}' already finished {last_step + 1} of {self.max_num_iterations} steps; pass "
                f"--max-num-iterations with a larger total to edit further"
            )


def source_models_folder(run: Path) -> Path:
    """The nerfstudio_models folder of a run given as its folder, its config.yml or that folder itself."""
    run = Path(run).expanduser()
    if run.name == "config.yml" or run.is_file():
        return run.parent / "nerfstudio_models"
    if (run / "nerfstudio_models").is_dir() or (run / "config.yml").is_file():
        return run / "nerfstudio_models"
    return run


class EdNerfEditTrainer(EdNerfTrainer):
    """Rebuilds the source run's pipeline from its config.yml, then edits it from step 0 with fresh optimizers
    (or, with --resume, continues an interrupted edit from its checkpoint)."""

    config: EdNerfEditTrainerConfig

    def setup(self, test_mode="val") -> None:
        from ednerf_ns.checkpoint import locate_source_run
        from ednerf_ns.cli_options import command_line_options
        from ednerf_ns.configs import ed_nerf_edit_trainer
        from ednerf_ns.edit_pipeline import merge_source_config

        self.config.validate()
        source = locate_source_run(self.config.load_dir, self.config.load_step)
        CONSOLE.log(f"Editing {source.checkpoint_path} (trained {source.step + 1} steps); it will not be modified")
        if self.config.resume is None:
            defaults = ed_nerf_edit_trainer().pipeline
            given = command_line_options()
            self.config.pipeline = merge_source_config(self.config.pipeline, source, defaults, given)
        super().setup(test_mode=test_mode)  # saves config.yml again, now with the source's architecture

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
        self.pipeline._step = step  # type: ignore[attr-defined]
        return super().train_iteration(step)

    def save_checkpoint(self, step: int) -> None:
        super().save_checkpoint(step)
        if self.local_rank == 0:
            # Prompts and guidance may have changed in the viewer: config.yml records the ones in use.
            running = self.config.max_num_iterations
            self.config.max_num_iterations = getattr(self, "_total_steps", running)
            try:
                self.config.save_config()
            finally:
                self.config.max_num_iterations = running


def loss_and_backward(model, outputs: dict, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Metrics, losses and the backward pass of one training step (what nerfstudio's pipeline and trainer do)."""
    metrics = model.get_metrics_dict(outputs, batch)
    loss_dict = model.get_loss_dict(outputs, batch, metrics)
    loss = functools.reduce(torch.add, loss_dict.values())
    loss.backward()
    return loss, loss_dict, metrics
