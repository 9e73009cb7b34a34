"""The training loop.

One iteration ("minibatch") runs up to four phases, each with its own fresh latents:

    Gmain  every step            G learns to fool D
    Greg   every g_reg_interval  path-length regularisation of G
    Dmain  every step            D learns real vs generated
    Dreg   every d_reg_interval  R1 regularisation of D

then updates G_ema and, every `ada_interval` steps, the augmentation probability p.
Every `tick` kimg it measures the overfitting heuristics, writes one line of stats.jsonl
and one console line; every `snap` ticks it writes a sample grid and a checkpoint.

The state of a run lives in a few objects: the config, the networks (G, D, G_ema), the
optimisers, the ADA controller (which owns p; the augmentation pipe reads it), and `Progress`.
Its parts are built in `ada.build`; snapshots and --resume are `ada.snapshots`, the run
directory `ada.rundir`, the tick's measurements `ada.monitor`.
"""

from __future__ import annotations

import copy
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ada import build, snapshots
from ada import checkpoint as ckpt_io
from ada.build import Phase
from ada.config import TrainConfig
from ada.data import ImageDataset
from ada.discriminator import Discriminator
from ada.distributed import DistContext, StopRequested
from ada.errors import UserError
from ada.evaluation import MetricReals, MetricSuite, format_results, write_results
from ada.files import append_jsonl
from ada.images import save_grid, to_device, to_float_images
from ada.loader import infinite_loader
from ada.loss import StyleGAN2Loss
from ada.monitor import CollapseSignal, measure_overfitting
from ada.networks import Generator
from ada.progress import Progress, Tick, TickBar, TickStats, cpu_memory_gb, finite_or_none, format_tick
from ada.rundir import SampleGrid, open_run_dir
from ada.tfevents import TensorBoardTracker
from ada.tracking import Tracker, Trackers

# Give up when one phase's gradients are non-finite this many times in a row.
MAX_CONSECUTIVE_BAD_STEPS = 20
# Minibatches between reads of the bad-step counters (and, with several processes, between agreements
# on a stop request): the host waits for the device this often, not in every step.
HEALTH_CHECK_INTERVAL = 16


class Trainer:
    """One training run: built from a config (and a --resume source), then `run` to cfg.kimg."""

    def __init__(
        self,
        cfg: TrainConfig,
        train_set: ImageDataset,
        val_set: ImageDataset | None,
        dist: DistContext,
        log: Callable[[str], None] = print,
        eval_set: ImageDataset | None = None,
    ):
        self.cfg = cfg
        self.train_set = train_set
        self.val_set = val_set
        # Metrics compare against every real image, as the official code does.
        self.eval_set = eval_set if eval_set is not None else train_set
        self.dist = dist
        self.device = dist.device
        self.run_dir: Path | None = None
        self._print = log if dist.rank == 0 else (lambda msg: None)
        self.per_rank = cfg.batch // dist.world_size
        self.batch_gpu = cfg.batch_gpu or self.per_rank
        self.progress = Progress()
        self.bar = TickBar(0, enabled=False)  # replaced by a live one in run()
        # Per phase, how many of its updates in a row had non-finite gradients.
        self.bad_streak: dict[str, int] = {}
        self.said_once: set[str] = set()
        self.last_snapshot: Path | None = None
        self.last_grid: Path | None = None
        self.start_time = time.time()  # reset when run() starts
        # What run() sets up for the run directory; the defaults write nothing.
        self.tracker: Tracker = Tracker()
        self.metric_suite: MetricSuite | None = None
        self.grid: SampleGrid | None = None
        # The signal that stopped the run early (another rank's stop counts as SIGTERM); None if it finished.
        self.stop_signal: int | None = None

        # Latents and labels are drawn for the global batch from a generator every rank shares, and each
        # rank takes its slice: N processes see the same latents as one process with the whole batch.
        self.shared_gen = torch.Generator().manual_seed(cfg.seed)

        info = train_set.info
        source = (
            snapshots.read_resume_source(cfg.resume, cfg.data, info, self._print) if cfg.resume else None
        )
        self.transfer = source is not None and source.transfer
        self.resumed_from = None if source is None else source.path
        if source is None:
            G_kwargs, D_kwargs = build.network_kwargs(cfg, info.resolution, info.channels, info.c_dim)
        else:
            # The architecture comes from the checkpoint; only precision follows this run's flags.
            G_kwargs, D_kwargs = build.apply_fp32(cfg, source.G_kwargs, source.D_kwargs)
        torch.manual_seed(cfg.seed)  # the same initial networks for any number of ranks
        self.G = Generator(**G_kwargs)
        self.D = Discriminator(**D_kwargs)
        # From here each rank draws its own noise inputs, augmentations and path-length probes.
        torch.manual_seed(cfg.seed * dist.world_size + dist.rank)
        np.random.seed((cfg.seed * dist.world_size + dist.rank) % 2**32)
        if source is not None:
            ckpt_io.load_state(self.G, source.G, str(source.path), "G")
            ckpt_io.load_state(self.D, source.D, str(source.path), "D")
        self.G_ema = copy.deepcopy(self.G).eval()
        if source is not None:
            ckpt_io.load_state(self.G_ema, source.G_ema, str(source.path), "G_ema")
        for net in (self.G, self.D, self.G_ema):
            net.to(self.device).requires_grad_(False)
        build.apply_precision(cfg, self.G, self.G_ema, self.D)
        self.dist.broadcast_module(self.G)
        self.dist.broadcast_module(self.D)
        self.dist.broadcast_module(self.G_ema)

        self.controller = build.build_controller(cfg, self.transfer)
        self.augment_pipe = build.build_augment_pipe(cfg, self.device, self.controller)
        self.apa_controller = build.build_apa_controller(cfg, self.transfer)
        d_params = build.freeze_d_layers(self.D, cfg.freezed)
        self.loss = StyleGAN2Loss(
            self.G, self.D, self.augment_pipe, r1_gamma=cfg.loss.r1_gamma, pl_weight=cfg.loss.pl_weight,
            pl_decay=cfg.loss.pl_decay, pl_batch_shrink=cfg.loss.pl_batch_shrink, style_mixing=cfg.loss.style_mixing,
            compile=cfg.compile, lecam_weight=cfg.loss.lecam, lecam_decay=cfg.loss.lecam_decay,
        )
        float16 = build.uses_float16(cfg, self.G, self.D, self.device)
        self.phases = build.build_phases(cfg, self.G, self.D, d_params, self.device, float16)
        if source is not None and source.state is not None:
            snapshots.restore_training_state(self, source.path, source.state)
            self.last_snapshot = source.path
        # Official transfer runs drop the EMA rampup, which would otherwise overwrite G_ema at once.
        self.ema_rampup = None if self.transfer else cfg.optim.ema_rampup
        self.collapse = CollapseSignal(train_set, self.G.z_dim, self.G.c_dim > 0, cfg.seed)
        self.data_iter = infinite_loader(
            train_set, cfg.batch, dist.rank, dist.world_size, cfg.seed, cfg.workers, start_batch=self.progress.batch_idx
        )

    def phase(self, name: str) -> Phase:
        return next(phase for phase in self.phases if phase.name == name)

    # ----- the loop -----

    def run(self, run_dir: Path | None) -> None:
        """Train to cfg.kimg, writing into `run_dir` (rank 0; None writes nothing)."""
        self.run_dir = run_dir
        self.start_time = time.time()
        cfg = self.cfg
        w = cfg.wandb
        if run_dir is not None:
            self.tracker = Trackers([
                Tracker.create(
                    run_dir=run_dir, config=cfg.to_dict(), project=w.project, entity=w.entity, group=w.group,
                    name=w.name, mode=w.mode, rank=self.dist.rank,
                ),
                TensorBoardTracker.create(run_dir, cfg.tensorboard, rank=self.dist.rank),
            ])
        if cfg.metrics:
            self.metric_suite = MetricSuite(cfg.metrics, cfg.features, cfg.ppl_net, self.device, self.say,
                                            pr_net=cfg.pr_net, xflip=cfg.mirror)
        exit_code = 1
        total_nimg = int(cfg.kimg * 1000)
        # Within a tick, a progress bar on an interactive terminal (rank 0); logs get only the tick lines.
        self.bar = TickBar(total_nimg, enabled=None if self.dist.rank == 0 else False)
        stop = StopRequested()
        stop.install()
        try:
            if self.dist.rank == 0 and self.run_dir is not None:
                self._open_run_dir()
            tick = self._start_tick(total_nimg)
            while True:
                self.train_step(tick.stats)
                self.bar.update(self.progress.cur_nimg)
                if self.progress.batch_idx % HEALTH_CHECK_INTERVAL == 0:
                    self.check_health()
                stopping = self._agree_to_stop(stop.requested)
                if not stopping and self.progress.cur_nimg < tick.end_nimg:
                    continue
                done = stopping or self.progress.cur_nimg >= total_nimg
                self.bar.close()
                self._end_tick(tick.stats, time.time() - tick.start_time, final=done, stopping=stop.requested)
                if done:
                    break
                tick = self._start_tick(total_nimg)
            if stopping:
                self.stop_signal = stop.signum or signal.SIGTERM
                self.log("Stopped on request; final snapshot written.")
            exit_code = 0
        finally:
            self.bar.close()
            stop.uninstall()
            self.tracker.finish(exit_code=exit_code)

    def _start_tick(self, total_nimg: int) -> Tick:
        """The tick now starting, and where it ends: a tick of cfg.tick kimg, or the end of training.

        Tick 0 ends after the first step, as in the official loop: a snapshot and a console line
        right away show that the run works. (`_end_tick` counts the tick and moves its start.)
        """
        prog = self.progress
        length = self.cfg.batch if prog.cur_tick == 0 else int(self.cfg.tick * 1000)
        end_nimg = min(prog.tick_start_nimg + length, total_nimg)
        self.bar.start(prog.cur_tick, prog.cur_nimg, end_nimg)
        return Tick(TickStats(), time.time(), end_nimg)

    def train_step(self, tick_stats: TickStats) -> None:
        """One minibatch: every due phase over all rounds of batch_gpu images, then EMA and the p update."""
        real_img, real_c = next(self.data_iter)
        real_img = to_float_images(real_img, self.device).split(self.batch_gpu)
        real_c = to_device(real_c, self.device).split(self.batch_gpu) if self.G.c_dim > 0 else None
        rounds = len(real_img)
        # APA's controller follows the same signs as ADA's, with its own target and speed.
        controllers = [self.controller] if self.apa_controller is None else [self.controller, self.apa_controller]
        if self.apa_controller is not None:
            self.loss.apa_p = self.apa_controller.p
        active = [ph for ph in self.phases if self.progress.batch_idx % ph.interval == 0]
        gen_z, gen_c = self.sample_latents(len(active))
        for i, phase in enumerate(active):
            for p in phase.params:
                p.requires_grad_(True)
            phase.opt.zero_grad(set_to_none=True)
            z_rounds = gen_z[i].split(self.batch_gpu)
            c_rounds = gen_c[i].split(self.batch_gpu) if gen_c is not None else [None] * rounds
            for k in range(rounds):
                stats = self.loss.accumulate_gradients(
                    phase.name, real_img[k], None if real_c is None else real_c[k], z_rounds[k], c_rounds[k],
                    gain=phase.scaler.scaled(phase.interval / rounds),
                )
                if "real_signs" in stats:
                    signs = stats.pop("real_signs")
                    for controller in controllers:
                        controller.accumulate(signs)
                for key, value in stats.items():
                    tick_stats.add(key, value)
            for p in phase.params:
                p.requires_grad_(False)
            self._apply_gradients(phase)
            if phase.name == "Greg":
                self.dist.average_(self.loss.pl_mean)
            if phase.name == "Dmain" and self.loss.lecam is not None:
                self.loss.lecam.update(reduce=self.dist.all_reduce_sum)
        beta = ema_beta(self.cfg.batch, self.progress.cur_nimg, self.cfg.optim.ema_kimg, self.ema_rampup)
        self.progress.cur_nimg += self.cfg.batch
        self.progress.batch_idx += 1
        self.dist.sync_w_avg(self.G)
        update_ema(self.G_ema, self.G, beta)
        for controller in controllers:
            controller.step(self.progress.batch_idx, self.cfg.batch, reduce=self.dist.all_reduce_sum,
                            nimg=self.progress.cur_nimg)
        message = self.controller.leak_warning()
        if message:
            self.say(message)

    def sample_latents(self, num_phases: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[phases, per_rank, z_dim] latents and labels for this rank's share of the global batch."""
        b, r = self.per_rank, self.dist.rank
        z = torch.randn([num_phases, self.cfg.batch, self.G.z_dim], generator=self.shared_gen)
        z = to_device(z[:, r * b : (r + 1) * b], self.device)
        if self.G.c_dim == 0:
            return z, None
        # Generated images get labels drawn from the training set's label distribution.
        idx = torch.randint(len(self.train_set), [num_phases * self.cfg.batch], generator=self.shared_gen)
        c = self.train_set.labels_of(idx.tolist()).reshape(num_phases, self.cfg.batch, -1)
        return z, to_device(c[:, r * b : (r + 1) * b], self.device)

    def _apply_gradients(self, phase: Phase) -> None:
        """Average gradients across ranks and step, unless any is non-finite: then the step is skipped.

        The decision is taken on the device (see `LossScaler`); `check_health` reads the outcome.
        """
        params = [p for p in phase.params if p.grad is not None]
        if not params:
            return
        if self.dist.active:
            # One collective for all of the phase's gradients.
            flat = self.dist.all_reduce_mean(torch.cat([p.grad.flatten() for p in params]))
            for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
                p.grad = g.view_as(p)
        phase.scaler.step(phase.opt, [p.grad for p in params])

    def check_health(self) -> None:
        """Count skipped steps and stop a diverged run. Reads device counters: call it every few steps.

        Counted per phase: a G that stays non-finite must stop the run even while D's steps are fine.
        """
        for phase in self.phases:
            streak, longest, skipped = phase.scaler.take_counts()
            self.bad_streak[phase.name] = streak
            self.progress.skipped_steps += skipped
            if longest >= MAX_CONSECUTIVE_BAD_STEPS:
                where = f"the last good snapshot is {self.last_snapshot}" if self.last_snapshot else "no snapshot yet"
                raise UserError(
                    f"training diverged: {longest} {phase.name} steps in a row had non-finite gradients by "
                    f"{self.progress.cur_nimg / 1000:.3f} kimg; {where}, untouched; resume from it with a lower "
                    "learning rate or --gamma"
                )

    def _agree_to_stop(self, requested: bool) -> bool:
        """All ranks must stop after the same step, whichever of them saw the signal. With several
        processes agreeing is a collective that waits for the GPU, so they agree every few steps."""
        if not self.dist.active:
            return requested
        if self.progress.batch_idx % HEALTH_CHECK_INTERVAL:
            return False
        return self.dist.any_rank(requested)

    def _end_tick(self, tick_stats: TickStats, seconds: float, final: bool, stopping: bool = False) -> None:
        """The tick's record (console, stats.jsonl, trackers), a snapshot when due, then the next tick's counters."""
        cfg, prog = self.cfg, self.progress
        self.check_health()
        tick_kimg = (prog.cur_nimg - prog.tick_start_nimg) / 1000
        means = tick_stats.means(self.dist.all_reduce_mean)
        rv = measure_overfitting(self)
        record = {
            "tick": prog.cur_tick,
            "kimg": prog.cur_nimg / 1000,
            "timestamp": time.time(),
            "sec_per_tick": seconds,
            "sec_per_kimg": seconds / max(tick_kimg, 1e-8),
            "loss_G": means.get("loss_G"),
            "loss_D": means.get("loss_D"),
            "loss_G_pl": means.get("loss_G_pl"),
            "loss_D_r1": means.get("loss_D_r1"),
            "loss_D_lecam": means.get("loss_D_lecam"),
            "p": self.controller.p,
            "p_apa": None if self.apa_controller is None else self.apa_controller.p,
            "r_t": self.controller.tick_r_t(reduce=self.dist.all_reduce_sum),
            **rv,
            "diversity": self.measure_diversity(),
            "mem_cpu_gb": cpu_memory_gb(),
            "mem_gpu_gb": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None,
            "skipped_steps": prog.skipped_steps,
        }
        record = {key: finite_or_none(value) for key, value in record.items()}
        if self.dist.rank == 0:
            self.log(format_tick(record, elapsed_s=time.time() - self.start_time))
            self.tracker.log_tick(record)
        if self.dist.rank == 0 and self.run_dir is not None:
            try:
                append_jsonl(self.run_dir / "stats.jsonl", record)
                prog.stats_lines += 1
            except UserError as exc:  # a full disk: the snapshot below may still fit, or the next one
                self.say(f"{exc}; training goes on")
        if final or prog.cur_tick % cfg.snap == 0:
            self._snapshot(final, stopping)
        prog.cur_tick += 1
        prog.tick_start_nimg = prog.cur_nimg
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _snapshot(self, final: bool, stopping: bool) -> None:
        """The sample grid and the checkpoint (rank 0), then the metrics (every rank)."""
        kimg = self.progress.cur_nimg / 1000
        rng = snapshots.rng_states(self)  # a collective: on every rank
        name = None
        if self.dist.rank == 0 and self.run_dir is not None:
            tag = ckpt_io.snapshot_tag(self.run_dir, self.progress.cur_nimg)
            name = f"network-snapshot-{tag}.pt"
            grid_path = self.run_dir / f"fakes{tag}.png"
            try:
                self.grid.save_fakes(self.grid.generate(self.G_ema, self.device, self.batch_gpu), grid_path)
                self.tracker.log_image(kimg, "fakes", grid_path)
                self.last_grid = grid_path
            except UserError as exc:
                self.say(f"{exc}; training goes on")
            self.save_snapshot(self.run_dir / name, rng, final=final)
        if not stopping:  # a stop request (preemption) leaves little time: metrics can run after resume
            self.evaluate_metrics(name, kimg)

    def measure_diversity(self) -> float | None:
        """The collapse signal; warned about once, from tick 1 on (a fresh G's samples have not spread yet)."""
        warn = (lambda message: self.say(message, key="collapse")) if self.progress.cur_tick > 0 else None
        return self.collapse.measure(self.G_ema, self.device, self.batch_gpu, warn)

    def evaluate_metrics(self, snapshot: str | None, kimg: float) -> None:
        """Every rank takes part; rank 0 writes metric-NAME.jsonl, the console line and wandb."""
        if self.metric_suite is None or not self.metric_suite.specs:
            return
        reals = MetricReals(self.eval_set, self.cfg.data)
        results = self.metric_suite.evaluate(self.G_ema, reals, self.dist.rank, self.dist.world_size)
        if self.dist.rank == 0 and self.run_dir is not None:
            write_results(results, self.run_dir, snapshot, kimg)
            self.log(f"metrics at {kimg:.1f} kimg: {format_results(results)}")
            for result in results:
                self.tracker.log_metric(kimg, dict(result.results))

    def _open_run_dir(self) -> None:
        """Rank 0, before the first step: the options, stats.jsonl as the snapshot left it, the sample grids."""
        run_dir = self.run_dir
        self.progress.stats_lines = open_run_dir(run_dir, self.cfg, self.progress.stats_lines, self.say)
        self.grid = SampleGrid(self.train_set, self.G.z_dim, self.G.c_dim > 0, self.cfg.seed)
        if self.progress.cur_nimg == 0:
            self.grid.save_reals(run_dir / "reals.png")
            fakes = self.grid.generate(self.G_ema, self.device, self.batch_gpu)
            save_grid(fakes, run_dir / "fakes_init.png", *self.grid.shape)
            self.tracker.log_image(0.0, "reals", run_dir / "reals.png")
            self.tracker.log_image(0.0, "fakes_init", run_dir / "fakes_init.png")

    def log(self, message: str) -> None:
        """Console (rank 0) and the run directory's log.txt."""
        with self.bar.hidden():
            self._print(message)
        if self.run_dir is not None and self.dist.rank == 0:
            try:
                with open(self.run_dir / "log.txt", "a") as f:
                    f.write(message + "\n")
            except OSError:
                pass

    def say(self, message: str, key: str | None = None) -> None:
        """A warning printed once per run (per `key`, default the message), and recorded in the run
        directory's log."""
        key = message if key is None else key
        if key in self.said_once:
            return
        self.said_once.add(key)
        self.log(f"warning: {message}")
        if self.run_dir is not None and self.dist.rank == 0:
            try:
                append_jsonl(self.run_dir / "log.jsonl", {"kimg": self.progress.cur_nimg / 1000, "warning": message})
            except UserError:
                pass  # the warning is on the console; a full disk is reported where it matters

    def checkpoint_state(self, rng_states: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole training state (see `snapshots.training_state`)."""
        return snapshots.training_state(self, rng_states)

    def save_snapshot(self, path: Path, rng_states: dict[str, Any] | None = None, final: bool = False) -> None:
        """Write a snapshot, or warn that it failed (see `snapshots.save_snapshot`)."""
        snapshots.save_snapshot(self, path, rng_states, final=final)


def ema_beta(batch: int, cur_nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Per-step decay of G_ema: a half-life of ema_kimg thousand images, shorter early on with a rampup."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    ema_params = list(G_ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in G.parameters()], 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)
