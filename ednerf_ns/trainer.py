"""Trainers for both stages: safe checkpoint loading, and a config.yml that records what was really built."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

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
    """TrainerConfig of `ed-nerf-edit`: `--load-dir` names the ed-nerf run to edit (it is never modified)."""

    _target: type = field(default_factory=lambda: EdNerfEditTrainer)

    def validate(self) -> None:
        from ednerf_ns.checkpoint import locate_source_run
        from ednerf_ns.errors import UserError

        if not (self.pipeline.model.prompt or "").strip():
            raise UserError('the target prompt is empty; pass --prompt "what the edited scene should show"')
        if self.load_dir is None:
            raise UserError("ed-nerf-edit needs the run to edit: pass --load-dir <ed-nerf run>/nerfstudio_models")
        source = locate_source_run(self.load_dir, self.load_step)
        if self.pipeline.datamanager.data is None:
            # No --data: edit the source run's scene (and name the run after it, as ns-train does).
            self.pipeline.datamanager.data = getattr(source.config.pipeline.datamanager, "data", None)
        super().validate()


class EdNerfEditTrainer(EdNerfTrainer):
    """Rebuilds the source run's pipeline from its config.yml, then edits it from step 0 with fresh optimizers."""

    config: EdNerfEditTrainerConfig

    def setup(self, test_mode="val") -> None:
        from ednerf_ns.checkpoint import locate_source_run
        from ednerf_ns.configs import ed_nerf_edit_trainer
        from ednerf_ns.edit_pipeline import merge_source_config

        self.config.validate()
        source = locate_source_run(self.config.load_dir, self.config.load_step)
        CONSOLE.log(f"Editing {source.checkpoint_path} (trained {source.step + 1} steps); it will not be modified")
        self.config.pipeline = merge_source_config(self.config.pipeline, source, ed_nerf_edit_trainer().pipeline)
        super().setup(test_mode=test_mode)  # saves config.yml again, now with the source's architecture

    def _load_checkpoint(self) -> None:
        # The pipeline loaded (and verified) the source weights itself; optimizers and step start fresh.
        CONSOLE.print("Edit starts at step 0 with fresh optimizers.")


def loss_and_backward(model, outputs: dict, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Metrics, losses and the backward pass of one training step (what nerfstudio's pipeline and trainer do)."""
    metrics = model.get_metrics_dict(outputs, batch)
    loss_dict = model.get_loss_dict(outputs, batch, metrics)
    loss = functools.reduce(torch.add, loss_dict.values())
    loss.backward()
    return loss, loss_dict, metrics
