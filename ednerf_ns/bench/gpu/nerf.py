"""The sections on the NeRF: the scene, ed-nerf training, the hash grids and ed-nerf-edit runs, each through
nerfstudio's real trainer loop with every step's phases marked."""

from __future__ import annotations

import dataclasses
import linecache
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ednerf_ns.bench.gpu.config import SOURCE_PROMPT, TARGET_PROMPT
from ednerf_ns.bench.gpu.core import BenchCore
from ednerf_ns.bench.gpu.timing import StepRecorder, r3, release_memory, time_calls


class NerfSections(BenchCore):
    """`dataset`, `train`, `train_variant`, `hash_grid` and `edit`, and how a run is prepared, run and read."""

    def dataset(self) -> dict[str, Any]:
        from ednerf_ns.demo.scene import (
            ObjectSpec,
            SceneSpec,
            focal_from_fov,
            orbit_cameras,
            render,
            write_nerfstudio_dataset,
        )

        spec = SceneSpec(objects=[ObjectSpec("sphere", "red", size=0.55)])
        t0 = time.perf_counter()
        self.data_dir = write_nerfstudio_dataset(
            spec,
            self.workdir / "scene",
            num_views=self.views,
            resolution=self.resolution,
            seed=self.cfg.seed,
            supersample=1,
            write_split=True,
        )
        write_s = time.perf_counter() - t0
        out: dict[str, Any] = {
            "views": self.views,
            "resolution": self.resolution,
            "latent_size": self.resolution // 8,
            "supersample": 1,
            "write_s": r3(write_s),
            "cpu_render_and_png_ms_per_view": r3(write_s / self.views * 1e3),
        }
        if self.clock.cuda:  # the same renderer on the GPU, for reference
            c2w = orbit_cameras(4, 3.2, (12.0, 50.0), spec.center(), self.cfg.seed)
            f = focal_from_fov(self.resolution, 50.0)
            c = self.resolution / 2

            def draw() -> Tensor:
                return render(spec, c2w, f, f, c, c, self.resolution, self.resolution, device=self.device)[0]

            out["gpu_render_ms_per_view_supersample2"] = r3(
                time_calls(self.clock, draw, warmup=1, iters=3)["median"] / 4
            )
        return out

    def train(self) -> dict[str, Any]:
        from ednerf_ns.configs import TRAIN_STEPS, ed_nerf_trainer
        from ednerf_ns.presets import apply_small_scene_preset

        config = ed_nerf_trainer()
        if self.tiny:
            apply_small_scene_preset(config)
        total = self.train_warmup + self.train_steps
        self.prepare_run(config, "train", total)
        config.pipeline.model.diffusion_model = str(self.model_dir)
        defaults = ed_nerf_trainer()
        costs: dict[str, float] = {"eval_s": float("nan"), "save_s": float("nan")}
        cost_errors: dict[str, str] = {}

        def extra_costs(trainer) -> None:
            # What the default run adds: evaluations every steps_per_eval_* and checkpoints every steps_per_save
            # (measured while nerfstudio's writers are still set up, as in the loop).
            for label, fn in (
                ("eval_s", lambda: trainer.eval_iteration(defaults.steps_per_eval_batch)),
                ("save_s", lambda: trainer.save_checkpoint(total)),
            ):
                try:
                    fn()  # the first call pays lazy initialisation (metrics, the VAE decoder's kernels)
                    self.clock.sync()
                    t0 = time.perf_counter()
                    fn()
                    self.clock.sync()
                    costs[label] = time.perf_counter() - t0
                except Exception as exc:  # the training itself is measured; keep it and the edit going
                    cost_errors[label] = f"{type(exc).__name__}: {exc}"[:500]
                    traceback.print_exc()

        run = self._run(config, skip=self.train_warmup, after=extra_costs)
        trainer = run.pop("trainer")
        self.train_run = config.get_base_dir()
        evals = sum(
            1
            for s in range(1, TRAIN_STEPS)
            if s % defaults.steps_per_eval_batch == 0 or s % defaults.steps_per_eval_image == 0
        )
        saves = sum(1 for s in range(1, TRAIN_STEPS) if s % defaults.steps_per_save == 0) + 1  # + the final one
        mean_s = (run["step_ms"] or {}).get("mean", float("nan")) / 1e3
        estimate = run["setup_s"] + run["loop_s"] + (TRAIN_STEPS - total) * mean_s
        estimate += evals * costs["eval_s"] + saves * costs["save_s"]
        del trainer
        run.update(
            config="registered ed-nerf config" + (" + small-scene preset" if self.tiny else ""),
            default_steps=TRAIN_STEPS,
            implementation=self._implementation(config),
            steps_per_s=r3(1e3 / run["step_ms"]["mean"]) if run["step_ms"] else None,
            eval_iteration_s=r3(costs["eval_s"]),
            checkpoint_s=r3(costs["save_s"]),
            default_run_evals=evals,
            default_run_checkpoints=saves,
            extrapolated_default_s=r3(estimate),
            extra_cost_errors=cost_errors,
            extrapolation=(
                f"setup + the measured {total} steps + {TRAIN_STEPS - total} x mean step + {evals} evaluations + "
                f"{saves} checkpoints. The proposal networks update every step early in training and less often "
                f"later (nerfacto's schedule), so later steps are cheaper: this is an upper estimate."
            ),
        )
        return run

    def train_variant(self, options: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
        """A short ed-nerf run with other model options (e.g. nerfstudio's own torch hash grid), for comparison
        with the main training measurement on the same card in the same process."""
        from ednerf_ns.configs import ed_nerf_trainer
        from ednerf_ns.presets import apply_small_scene_preset

        config = ed_nerf_trainer()
        if self.tiny:
            apply_small_scene_preset(config)
        self.prepare_run(config, "train-variant", warmup + steps)
        config.pipeline.model.diffusion_model = str(self.model_dir)
        apply_options(config, options)
        run = self._run(config, skip=warmup)
        run["step_graph"] = step_graph_stats(run.pop("trainer"))
        run.update(options=options, steps_per_s=r3(1e3 / run["step_ms"]["mean"]) if run["step_ms"] else None)
        return run

    def hash_grid(self) -> dict[str, Any]:
        """Forward + backward (table gradient) of the three hash grids of a step at the scene's latent size: the
        torch kernels (ednerf_ns.accel.hashgrid) against the fused Triton kernels, with their relative difference."""
        from nerfstudio.field_components.encodings import HashEncoding

        from ednerf_ns.accel.hashgrid import accelerate_hash_grids

        rays = (self.resolution // 8) ** 2
        grids = {  # nerfacto's proposal networks and the ed-nerf field, with the samples per ray of each
            "proposal_0": (dict(num_levels=5, min_res=16, max_res=128), 256),
            "proposal_1": (dict(num_levels=5, min_res=16, max_res=256), 96),
            "field": (dict(num_levels=16, min_res=16, max_res=512), 48),
        }
        out: dict[str, Any] = {"rays": rays}
        for name, (args, per_ray) in grids.items():
            torch.manual_seed(self.cfg.seed)
            enc = HashEncoding(**args, log2_hashmap_size=17, features_per_level=2, implementation="torch")
            accelerate_hash_grids(enc, triton=False)
            enc = enc.to(self.device)
            # samples along rays, as the sampler makes them (consecutive rows close together): the backward's
            # cost depends on how often neighbouring samples share cells
            origins = 0.2 + 0.6 * torch.rand(rays, 1, 3, device=self.device)
            directions = torch.nn.functional.normalize(torch.randn(rays, 1, 3, device=self.device), dim=-1) * 0.3
            t = torch.rand(rays, per_ray, 1, device=self.device).sort(dim=1).values
            x = (origins + directions * t).reshape(-1, 3).clamp(0, 1)
            upstream = torch.randn(rays * per_ray, enc.get_out_dim(), device=self.device)
            row: dict[str, Any] = {"samples": rays * per_ray, "levels": args["num_levels"]}
            results = {}
            for kernel in ("torch", "triton"):
                enc.use_triton = kernel == "triton"

                def step(enc=enc, x=x, upstream=upstream):
                    enc.hash_table.grad = None
                    encoded = enc(x)
                    encoded.backward(upstream)
                    return encoded

                try:
                    encoded = step()
                    results[kernel] = (encoded.detach().clone(), enc.hash_table.grad.clone())
                    row[f"{kernel}_ms"] = time_calls(self.clock, step, warmup=2, iters=10)
                except Exception as exc:
                    row[f"{kernel}_error"] = f"{type(exc).__name__}: {exc}"[:500]
            if len(results) == 2:
                (a, ga), (b, gb) = results["torch"], results["triton"]
                row["forward_rel_diff"] = float(f"{float((a - b).norm() / a.norm()):.3e}")
                row["grad_rel_diff"] = float(f"{float((ga - gb).norm() / ga.norm()):.3e}")
                row["speedup"] = r3(row["torch_ms"]["median"] / row["triton_ms"]["median"])
            out[name] = row
            del enc, x, upstream, results
            release_memory()
        return out

    def edit(self, name: str, options: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
        from ednerf_ns.configs import EDIT_STEPS, ed_nerf_edit_trainer

        assert self.train_run is not None, "the edit needs the training run"
        config = ed_nerf_edit_trainer()
        self.prepare_run(config, f"edit-{name}", steps)
        config.load_dir = self.train_run / "nerfstudio_models"
        config.pipeline.model.prompt = TARGET_PROMPT
        config.pipeline.model.source_prompt = SOURCE_PROMPT
        config.pipeline.model.mask_source = "dataset"  # the procedural scene's object masks: the masked edit
        apply_options(config, options)
        run = self._run(config, skip=warmup)
        trainer = run.pop("trainer")
        runner = trainer.pipeline.model.diffusion.unet_runner
        run["unet_runner"] = dataclasses.asdict(runner.stats)
        run["unet_acceleration"] = dataclasses.asdict(runner.options)
        run["step_graph"] = step_graph_stats(trainer)
        run["options"] = options
        run["config"] = "registered ed-nerf-edit config, dataset masks" + (f", {options}" if options else "")
        run["edit_masks"] = "edit_mask" in trainer.pipeline.datamanager.cached_train[0]
        if run["step_ms"]:
            mean_s = run["step_ms"]["mean"] / 1e3
            run["default_steps"] = EDIT_STEPS
            run["extrapolated_default_s"] = r3(run["setup_s"] + run["loop_s"] + (EDIT_STEPS - steps) * mean_s)
            if steps >= EDIT_STEPS:
                run["measured_default_s"] = r3(run["setup_s"] + run["loop_s"])
        del trainer
        return run

    # ------------------------------------------------------------------ helpers
    def prepare_run(self, config, name: str, steps: int) -> None:
        """The registered method config with this run's data, device, steps and folders; no viewer."""
        config.machine.device_type = self.device.type
        config.machine.seed = self.cfg.seed
        config.vis = "tensorboard"  # no viewer server; nerfstudio's tensorboard logging stays on
        config.logging.local_writer.enable = False  # no per-step console table in the log
        config.max_num_iterations = steps
        config.output_dir = self.workdir / "runs"
        config.experiment_name = name
        config.pipeline.datamanager.data = self.data_dir
        config.pipeline.datamanager.cache_dir = self.workdir / "cache"

    def _run(self, config, skip: int, after: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Set up and train `config` as `ns-train` does, with the phases of every step marked; then `after(trainer)`.

        Host synchronisations are listed over `sync_window` steps at the end of the warm-up (after step 0, which
        captures the CUDA graph), so the debug mode's own cost stays out of the measured steps.
        """
        from ednerf_ns.tools.runs import reset_nerfstudio_writers, start_run

        start_run(config)
        sync_start = max(1, skip - self.cfg.sync_window)
        recorder = StepRecorder(self.clock, sync_start, self.cfg.sync_window, memory_reset_step=skip)
        if self.clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated() if self.clock.cuda else 0
        t0 = time.perf_counter()
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        self.clock.sync()
        setup_s = time.perf_counter() - t0
        pipeline = trainer.pipeline
        model = pipeline.model
        recorder.instrument(trainer, "train_iteration", "iteration", begins_step=True)
        recorder.instrument(trainer.optimizers, "zero_grad_some", "zero_grad")
        recorder.instrument(trainer.optimizers, "optimizer_scaler_step_some", "optimizer")
        recorder.instrument(trainer.optimizers, "scheduler_step_all", "scheduler")
        recorder.instrument(pipeline, "get_train_loss_dict", "forward")
        recorder.instrument(pipeline.datamanager, "next_train", "data")
        recorder.instrument(model, "forward", "render")
        recorder.instrument(model, "get_metrics_dict", "metrics")
        recorder.instrument(model, "get_loss_dict", "loss")
        recorder.instrument(model.diffusion, "predict_noise", "unet")
        if getattr(trainer, "step_graph", None) is not None:
            # forward + backward of a step, whether replayed from the graph, captured or run eagerly
            recorder.instrument(trainer.step_graph, "run", "step_graph")
        try:
            with warnings.catch_warnings(record=True) as caught:
                # Every sync-debug warning counts; other warnings keep their filters (once per place).
                warnings.filterwarnings("always", message=".*synchroniz")
                t0 = time.perf_counter()
                trainer.train()
                self.clock.sync()
                loop_s = time.perf_counter() - t0
            recorder.remove()
            memory = self._memory(resident, recorder.peak_before_reset)
            if after is not None:
                after(trainer)
        finally:
            recorder.remove()
            reset_nerfstudio_writers()
        out = recorder.summary(skip)
        first = recorder.summary(0)["phases_ms"].get("iteration")
        out.update(
            trainer=trainer,
            setup_s=r3(setup_s),
            loop_s=r3(loop_s),
            steps_run=config.max_num_iterations,
            warmup_steps=skip,
            first_step_ms=r3(self.clock.ms(*recorder.steps[0]["marks"]["iteration"][0])) if recorder.steps else None,
            iteration_ms_all_steps=first,
            host_syncs=self._syncs(caught, recorder),
            **memory,
        )
        return out

    def _memory(self, resident: int, peak_warmup: int) -> dict[str, float | None]:
        """Peak allocated memory of the run (setup and every step) and of the steps after the warm-up; both include
        what was resident before the run (the diffusion model's weights)."""
        if not self.clock.cuda:
            return {}
        steady = torch.cuda.max_memory_allocated()
        peak = max(steady, peak_warmup)
        return {
            "peak_memory_gb": r3(peak / 1e9),
            "peak_memory_after_warmup_gb": r3(steady / 1e9),
            "peak_reserved_gb": r3(torch.cuda.max_memory_reserved() / 1e9),
            "resident_before_gb": r3(resident / 1e9),
            "peak_above_resident_gb": r3((peak - resident) / 1e9),
        }

    def _syncs(self, caught: list, recorder: StepRecorder) -> dict[str, Any]:
        """Host synchronisations per step, by source line, from the sync debug mode's warnings."""
        if not self.clock.cuda:
            return {"note": "not measured off CUDA"}
        sites: Counter[str] = Counter()
        for w in caught:
            if "synchroniz" not in str(w.message):
                continue
            line = linecache.getline(w.filename, w.lineno).strip()
            sites[f"{_short_path(w.filename)}:{w.lineno}: {line[:120]}"] += 1
        steps = max(1, min(self.cfg.sync_window, len(recorder.steps) - recorder.sync_start))
        return {
            "steps_observed": steps,
            "per_step": r3(sum(sites.values()) / steps),
            "sites_per_step": {k: r3(v / steps) for k, v in sites.most_common()},
        }

    def _implementation(self, config) -> str:
        return str(config.pipeline.model.implementation)


def apply_options(config, options: dict[str, Any]) -> None:
    """Model options by name; `trainer.<name>` sets a trainer option (e.g. trainer.mixed_precision)."""
    for key, value in options.items():
        if key.startswith("trainer."):
            setattr(config, key.removeprefix("trainer."), value)
        else:
            setattr(config.pipeline.model, key, value)


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "ednerf_ns/"):
        if marker in path:
            return (marker if marker == "ednerf_ns/" else "") + path.split(marker, 1)[1]
    return path


def step_graph_stats(trainer) -> dict[str, Any] | None:
    """What the trainer's step graph did (None when steps ran as nerfstudio's eager loop)."""
    graph = getattr(trainer, "step_graph", None)
    return dataclasses.asdict(graph.stats) if graph is not None else None


def combine_training(result: dict[str, Any]) -> dict[str, Any] | None:
    """The default ed-nerf run's time from the two measured phases: steps during the proposal-weight anneal run
    eagerly ("train"), later steps replay a CUDA graph ("train_after_anneal")."""
    from ednerf_ns.configs import TRAIN_STEPS, ed_nerf_trainer

    train, after = result.get("train") or {}, result.get("train_after_anneal") or {}
    eager_ms = (train.get("step_ms") or {}).get("mean")
    graph_ms = (after.get("step_ms") or {}).get("mean")
    if not eager_ms or not graph_ms:
        return None
    anneal = int(ed_nerf_trainer().pipeline.model.proposal_weights_anneal_max_num_iters)
    measured = int(train.get("steps_run") or 0)
    evals, saves = train.get("default_run_evals") or 0, train.get("default_run_checkpoints") or 0
    estimate = train["setup_s"] + train["loop_s"] + max(0, anneal - measured) * eager_ms / 1e3
    estimate += (TRAIN_STEPS - max(anneal, measured)) * graph_ms / 1e3
    estimate += evals * (train.get("eval_iteration_s") or 0.0) + saves * (train.get("checkpoint_s") or 0.0)
    return {
        "extrapolated_default_s": r3(estimate),
        "eager_step_ms": r3(eager_ms),
        "graph_step_ms": r3(graph_ms),
        "anneal_steps": anneal,
        "how": f"setup + the measured {measured} steps + the rest of the {anneal} anneal steps at the eager mean + "
        f"{TRAIN_STEPS - max(anneal, measured)} steps at the mean after the anneal + evaluations + checkpoints",
    }
