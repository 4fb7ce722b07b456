"""Trainers for both stages: safe checkpoint loading, and a config.yml that records what was really built."""

from __future__ import annotations

from dataclasses import dataclass, field

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from ednerf_ns.checkpoint import find_checkpoint, load_verified, read_checkpoint


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
    """Trainer that rewrites config.yml after setup (so `implementation: auto` is saved as what was built) and
    resumes from `--load-dir` without nerfstudio's unsafe `torch.load`."""

    config: EdNerfTrainerConfig

    def setup(self, test_mode="val") -> None:
        super().setup(test_mode=test_mode)
        if self.local_rank == 0:
            self.config.save_config()

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
