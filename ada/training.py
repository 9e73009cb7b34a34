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
optimisers, the augmentation pipe and the ADA controller, and `Progress`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ada import checkpoint as ckpt_io
from ada.config import TrainConfig
from ada.controller import AdaController
from ada.data import ImageDataset, infinite_loader
from ada.distributed import DistContext
from ada.errors import UserError
from ada.files import append_jsonl, atomic_write_text, read_jsonl, remove_stale_temporaries, rewrite_jsonl
from ada.images import grid_shape, save_grid
from ada.loss import StyleGAN2Loss
from ada.networks import Discriminator, Generator

# Give up when one phase's gradients are non-finite this many times in a row.
MAX_CONSECUTIVE_BAD_STEPS = 20
# Images per set for the r_v measurement at each tick.
RV_BATCH = 64


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    interval: int


@dataclass
class Progress:
    cur_nimg: int = 0
    cur_tick: int = 0
    batch_idx: int = 0
    tick_start_nimg: int = 0
    skipped_steps: int = 0
    stats_lines: int = 0


@dataclass
class TickStats:
    """Sums of the per-step losses over one tick, kept as tensors so no step waits for the device."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        self.counts[key] = self.counts.get(key, 0) + 1

    def means(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        out = {}
        for key, total in self.sums.items():
            out[key] = float(reduce(total.reshape(1))) / self.counts[key]
        return out


def build_networks(cfg: TrainConfig, resolution: int, channels: int, c_dim: int) -> tuple[Generator, Discriminator]:
    m = cfg.model
    num_fp16_res = 0 if cfg.fp32 else m.num_fp16_res
    conv_clamp = None if cfg.fp32 else m.conv_clamp
    G = Generator(
        z_dim=m.z_dim, c_dim=c_dim, w_dim=m.w_dim, img_resolution=resolution, img_channels=channels,
        mapping_kwargs=dict(num_layers=m.map_layers),
        synthesis_kwargs=dict(
            channel_base=m.channel_base, channel_max=m.channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp
        ),
    )
    D = Discriminator(
        c_dim=c_dim, img_resolution=resolution, img_channels=channels, architecture=m.d_architecture,
        channel_base=m.channel_base, channel_max=m.channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
        epilogue_kwargs=dict(mbstd_group_size=m.mbstd_group),
    )
    return G, D


def freeze_d_layers(D: Discriminator, n: int) -> list[torch.nn.Parameter]:
    """Freeze-D: the first n block layers (highest resolutions) get no updates. Returns D's trainable params."""
    layers = D.layer_modules()
    if n > len(layers):
        raise UserError(f"--freezed={n} exceeds the discriminator's {len(layers)} layers")
    frozen = {id(p) for layer in layers[:n] for p in layer.parameters()}
    for layer in layers[:n]:
        layer.requires_grad_(False)
    return [p for p in D.parameters() if id(p) not in frozen]


def lazy_adam(params: list[torch.nn.Parameter], cfg: TrainConfig, reg_interval: int) -> torch.optim.Adam:
    """Adam whose lr and betas compensate for regularising only every `reg_interval` steps."""
    ratio = reg_interval / (reg_interval + 1)
    o = cfg.optim
    return torch.optim.Adam(
        params, lr=o.lr * ratio, betas=(o.beta1**ratio, o.beta2**ratio), eps=o.eps
    )


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


def to_float_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1


def run_description(cfg: TrainConfig, data_name: str) -> str:
    parts = [data_name, cfg.cfg]
    if cfg.cond:
        parts.append("cond")
    if cfg.mirror:
        parts.append("mirror")
    parts.append(cfg.aug.mode if cfg.aug.mode != "fixed" else f"p{cfg.aug.p:g}")
    if cfg.aug.mode == "ada":
        parts.append(f"target{cfg.aug.target:g}")
    if cfg.aug.mode != "noaug":
        parts.append(cfg.aug.pipe)
    if cfg.resume:
        parts.append("resume")
    if cfg.freezed:
        parts.append(f"freezed{cfg.freezed}")
    return "-".join(parts)


def make_run_dir(outdir: Path, desc: str) -> Path:
    """outdir/NNNNN-desc with the next free number."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--outdir={outdir}: cannot create it ({exc.strerror})") from None
    ids = [int(p.name.split("-")[0]) for p in outdir.iterdir() if p.name.split("-")[0].isdigit()]
    run_id = max(ids, default=-1) + 1
    run_dir = outdir / f"{run_id:05d}-{desc}"
    run_dir.mkdir()
    return run_dir


class StopRequested:
    """SIGTERM / Ctrl-C ask the loop to stop after the current step and write a final snapshot."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        train_set: ImageDataset,
        val_set: ImageDataset | None,
        dist: DistContext,
        log: Callable[[str], None] = print,
    ):
        self.cfg = cfg
        self.train_set = train_set
        self.val_set = val_set
        self.dist = dist
        self.device = dist.device
        self.run_dir: Path | None = None
        self.log = log if dist.rank == 0 else (lambda msg: None)
        self.batch_gpu = cfg.batch // dist.world_size
        self.progress = Progress()
        # Per phase, how many of its updates in a row had non-finite gradients.
        self.bad_streak: dict[str, int] = {}
        self.said_once: set[str] = set()
        self.last_snapshot: Path | None = None

        torch.manual_seed(cfg.seed * dist.world_size + dist.rank)
        np.random.seed((cfg.seed * dist.world_size + dist.rank) % 2**32)
        # Latents and labels are drawn for the global batch from a generator every rank shares, and each
        # rank takes its slice: N processes see the same latents as one process with the whole batch.
        self.shared_gen = torch.Generator().manual_seed(cfg.seed)

        info = train_set.info
        self.G, self.D = build_networks(cfg, info.resolution, info.channels, info.c_dim)
        self.resume_state: dict[str, Any] | None = None
        self.transfer = False
        if cfg.resume:
            self._load_resume(cfg.resume, info)
        self.G_ema = copy.deepcopy(self.G).eval()
        if self.resume_state is not None:
            ckpt_io.load_state(self.G_ema, self.resume_state["G_ema"], cfg.resume, "G_ema")
        for net in (self.G, self.D, self.G_ema):
            net.to(self.device).requires_grad_(False)
        self._apply_precision()
        self.dist.broadcast_module(self.G)
        self.dist.broadcast_module(self.D)
        self.dist.broadcast_module(self.G_ema)

        self.augment_pipe = self._build_augment_pipe()
        self.controller = self._build_controller()
        d_params = freeze_d_layers(self.D, cfg.freezed)
        self.loss = StyleGAN2Loss(
            self.G, self.D, self.augment_pipe, r1_gamma=cfg.loss.r1_gamma, pl_weight=cfg.loss.pl_weight,
            pl_decay=cfg.loss.pl_decay, pl_batch_shrink=cfg.loss.pl_batch_shrink, style_mixing=cfg.loss.style_mixing,
        )
        self.phases = self._build_phases(list(self.G.parameters()), d_params)
        if self.resume_state is not None:
            self._restore_training_state(self.resume_state)
        self.data_iter = infinite_loader(
            train_set, cfg.batch, dist.rank, dist.world_size, cfg.seed, cfg.workers, start_batch=self.progress.batch_idx
        )

    # ----- setup -----

    def _load_resume(self, spec: str, info: Any) -> None:
        """Continue a run on the same data exactly; on other data (transfer) take the weights only."""
        path = ckpt_io.resolve_checkpoint_path(spec)
        if ckpt_io.is_our_checkpoint(path):
            state = ckpt_io.load_checkpoint(path)
            kwargs = state["G_kwargs"]
            self._check_compatible(path, kwargs["img_resolution"], kwargs["img_channels"], kwargs["c_dim"], info)
            ckpt_io.load_state(self.G, state["G"], str(path), "G")
            ckpt_io.load_state(self.D, state["D"], str(path), "D")
            self.transfer = state["dataset"]["name"] != info.name
            if self.transfer:
                state = {"G_ema": state["G_ema"]}
                self.log(f"Fine-tuning from {path} (trained on other data): weights only, starting at 0 kimg")
            else:
                self.log(f"Resuming from {path} at {state['progress']['cur_nimg'] / 1000:.1f} kimg")
                self.last_snapshot = path
            self.resume_state = state
        else:
            from ada.official import load_official_pickle

            imported = load_official_pickle(path)
            G = imported.G
            self._check_compatible(path, G.img_resolution, G.img_channels, G.c_dim, info)
            ckpt_io.load_state(self.G, imported.G.state_dict(), str(path), "G")
            ckpt_io.load_state(self.D, imported.D.state_dict(), str(path), "D")
            self.resume_state = {"G_ema": imported.G_ema.state_dict()}
            self.transfer = True
            self.log(f"Imported official network pickle {path}:\n{imported.report}")

    @staticmethod
    def _check_compatible(path: Path, resolution: int, channels: int, c_dim: int, info: Any) -> None:
        if (resolution, channels, c_dim) != (info.resolution, info.channels, info.c_dim):
            raise UserError(
                f"{path} was trained on {resolution}x{resolution}x{channels} images with {c_dim} classes, but "
                f"--data is {info.resolution}x{info.resolution}x{info.channels} with {info.c_dim} classes; "
                "convert the data with `ada dataset --resolution` or choose a matching checkpoint"
            )

    def _apply_precision(self) -> None:
        reduced = torch.bfloat16 if self.cfg.bf16 else torch.float16
        memory_format = torch.channels_last if self.cfg.nhwc else torch.contiguous_format
        for net in (self.G.synthesis, self.G_ema.synthesis, self.D):
            net.reduced_dtype = reduced
            net.memory_format = memory_format

    def _build_augment_pipe(self) -> torch.nn.Module | None:
        if self.cfg.aug.mode == "noaug":
            return None
        from augment import AugmentPipe

        pipe = AugmentPipe(preset=self.cfg.aug.pipe).to(self.device)
        pipe.p.copy_(torch.as_tensor(self.cfg.aug.p))
        return pipe

    def _build_controller(self) -> AdaController:
        a = self.cfg.aug
        # A transfer run (from weights trained on other data) reacts faster, as the official code does.
        ada_kimg = a.ada_kimg_resume if self.transfer else a.ada_kimg
        return AdaController(
            target=a.target, interval=a.ada_interval, ada_kimg=ada_kimg, p=a.p, p_max=a.p_max,
            heuristic=a.heuristic, adjust=a.mode == "ada",
        )

    def _build_phases(self, g_params: list, d_params: list) -> list[Phase]:
        cfg = self.cfg
        phases = []
        for name, module, params, reg_interval in (
            ("G", self.G, g_params, cfg.loss.g_reg_interval),
            ("D", self.D, d_params, cfg.loss.d_reg_interval),
        ):
            opt = lazy_adam(params, cfg, reg_interval)
            phases.append(Phase(f"{name}main", module, params, opt, 1))
            if name == "G" and cfg.loss.pl_weight == 0:
                continue
            if name == "D" and cfg.loss.r1_gamma == 0:
                continue
            phases.append(Phase(f"{name}reg", module, params, opt, reg_interval))
        return phases

    def _restore_training_state(self, state: dict[str, Any]) -> None:
        if "opt_G" not in state:
            return  # imported weights only: a fresh run from them
        self.phases[0].opt.load_state_dict(state["opt_G"])
        next(p for p in self.phases if p.name == "Dmain").opt.load_state_dict(state["opt_D"])
        self.controller.load_state_dict(state["controller"])
        self.loss.pl_mean.copy_(state["pl_mean"])
        known = {f.name for f in fields(Progress)}
        self.progress = Progress(**{k: v for k, v in state["progress"].items() if k in known})
        self.progress.tick_start_nimg = self.progress.cur_nimg
        self.shared_gen.set_state(state["rng"]["shared"])
        torch.set_rng_state(state["rng"]["torch"][self.dist.rank % len(state["rng"]["torch"])])

    # ----- the loop -----

    def sample_latents(self, num_phases: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[phases, batch_gpu, z_dim] latents and labels for this rank's share of the global batch."""
        b, r = self.batch_gpu, self.dist.rank
        z = torch.randn([num_phases, self.cfg.batch, self.G.z_dim], generator=self.shared_gen)
        z = z[:, r * b : (r + 1) * b].to(self.device)
        if self.G.c_dim == 0:
            return z, None
        idx = torch.randint(len(self.train_set), [num_phases * self.cfg.batch], generator=self.shared_gen)
        c = self.train_set.batch(idx.tolist())[1].reshape(num_phases, self.cfg.batch, -1)
        return z, c[:, r * b : (r + 1) * b].to(self.device)

    def train_step(self, tick_stats: TickStats) -> None:
        real_img, real_c = next(self.data_iter)
        real_img = to_float_images(real_img, self.device)
        real_c = real_c.to(self.device) if self.G.c_dim > 0 else None
        if self.augment_pipe is not None:
            self.augment_pipe.p.fill_(self.controller.p)
        active = [ph for ph in self.phases if self.progress.batch_idx % ph.interval == 0]
        gen_z, gen_c = self.sample_latents(len(active))
        for i, phase in enumerate(active):
            for p in phase.params:
                p.requires_grad_(True)
            phase.opt.zero_grad(set_to_none=True)
            pl_mean = self.loss.pl_mean.clone()
            stats = self.loss.accumulate_gradients(
                phase.name, real_img, real_c, gen_z[i], None if gen_c is None else gen_c[i], gain=phase.interval
            )
            for p in phase.params:
                p.requires_grad_(False)
            real_signs = stats.pop("real_signs", None)
            if not self._apply_gradients(phase):
                # A skipped phase leaves no trace: a non-finite path length would stay in pl_mean for good.
                self.loss.pl_mean.copy_(pl_mean)
                continue
            if real_signs is not None:
                self.controller.accumulate(real_signs)
            for key, value in stats.items():
                tick_stats.add(key, value)
        self.progress.cur_nimg += self.cfg.batch
        self.progress.batch_idx += 1
        self.dist.sync_w_avg(self.G)
        beta = ema_beta(self.cfg.batch, self.progress.cur_nimg, self.cfg.optim.ema_kimg, self.cfg.optim.ema_rampup)
        update_ema(self.G_ema, self.G, beta)
        self.controller.step(self.progress.batch_idx, self.cfg.batch, reduce=self.dist.all_reduce_sum)
        message = self.controller.leak_warning()
        if message:
            self.say(message)

    def _apply_gradients(self, phase: Phase) -> bool:
        """Average gradients across ranks and step, unless any is non-finite: then skip the step.

        Returns whether the step was taken. Every rank sees the same averaged gradients, so all skip together.
        """
        params = [p for p in phase.params if p.grad is not None]
        if not params:
            return True
        flat = torch.cat([p.grad.flatten() for p in params])
        flat = self.dist.all_reduce_mean(flat)
        if not bool(torch.isfinite(flat).all()):
            self.progress.skipped_steps += 1
            streak = self.bad_streak[phase.name] = self.bad_streak.get(phase.name, 0) + 1
            phase.opt.zero_grad(set_to_none=True)
            if streak >= MAX_CONSECUTIVE_BAD_STEPS:
                where = f"the last good snapshot is {self.last_snapshot}" if self.last_snapshot else "no snapshot yet"
                raise UserError(
                    f"training diverged: {streak} {phase.name} steps in a row had non-finite gradients at "
                    f"{self.progress.cur_nimg / 1000:.3f} kimg; {where}, untouched; resume from it with a lower "
                    "learning rate or --gamma"
                )
            return False
        self.bad_streak[phase.name] = 0
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p)
        phase.opt.step()
        return True

    def say(self, message: str) -> None:
        """A warning printed once per run, and recorded in the run directory's log."""
        if message in self.said_once:
            return
        self.said_once.add(message)
        self.log(f"warning: {message}")
        if self.run_dir is not None and self.dist.rank == 0:
            try:
                append_jsonl(self.run_dir / "log.jsonl", {"kimg": self.progress.cur_nimg / 1000, "warning": message})
            except UserError:
                pass  # already on the console; the disk that refused it is warned about there

    @torch.no_grad()
    def measure_overfitting(self) -> dict[str, float | None]:
        """Mean raw logits of D on training reals, withheld reals and fakes (through the pipe at the current p)."""
        if self.val_set is None:
            self.say("no validation split (--val=0): r_v is not measured")
            return {"logit_train": None, "logit_val": None, "logit_gen": None, "r_v": None}
        from ada.controller import r_v

        n = min(RV_BATCH, len(self.val_set.names), len(self.train_set.names))
        n = max(n - n % max(min(self.cfg.model.mbstd_group, n), 1), 1)
        gen = torch.Generator().manual_seed(self.cfg.seed + self.progress.cur_tick)
        val_idx = torch.randperm(len(self.val_set.names), generator=gen)[:n].tolist()
        train_idx = torch.randperm(len(self.train_set.names), generator=gen)[:n].tolist()
        val_img, val_c = self.val_set.batch(val_idx)
        tr_img, tr_c = self.train_set.batch(train_idx)
        c = lambda t: t.to(self.device) if self.G.c_dim > 0 else None  # noqa: E731
        z = torch.randn([n, self.G.z_dim], generator=gen).to(self.device)
        logits = {}
        # Measuring must not change training: G's w_avg stays, and the noise and augmentations drawn
        # here come from a forked RNG, so the training stream is the same whenever ticks end.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            gen_img = self.G.synthesis(self.G.mapping(z, c(tr_c), update_w_avg=False), noise_mode="random")
            for key, img, labels in (
                ("logit_train", to_float_images(tr_img, self.device), c(tr_c)),
                ("logit_val", to_float_images(val_img, self.device), c(val_c)),
                ("logit_gen", gen_img, c(tr_c)),
            ):
                logits[key] = float(self.dist.all_reduce_mean(self.loss.run_D(img, labels).mean().reshape(1)))
        logits["r_v"] = r_v(logits["logit_train"], logits["logit_val"], logits["logit_gen"])
        self.controller.last_r_v = logits["r_v"]
        return logits

    def run(self, run_dir: Path | None) -> None:
        """Train to cfg.kimg, writing into `run_dir` (rank 0; None writes nothing)."""
        self.run_dir = run_dir
        cfg = self.cfg
        total_nimg = int(cfg.kimg * 1000)
        tick_nimg = int(cfg.tick * 1000)
        stop = StopRequested()
        stop.install()
        try:
            if self.dist.rank == 0 and self.run_dir is not None:
                self._start_run_dir()
            tick_stats = TickStats()
            tick_start = time.time()
            while True:
                self.train_step(tick_stats)
                done = self.progress.cur_nimg >= total_nimg or stop.requested
                if not done and self.progress.cur_nimg < self.progress.tick_start_nimg + tick_nimg:
                    continue
                self._end_tick(tick_stats, time.time() - tick_start, final=done)
                tick_stats = TickStats()
                tick_start = time.time()
                if done:
                    break
            if stop.requested:
                self.log("Stopped on request; final snapshot written.")
        finally:
            stop.uninstall()

    def _start_run_dir(self) -> None:
        run_dir = self.run_dir
        atomic_write_text(run_dir / "training_options.json", json.dumps(self.cfg.to_dict(), indent=2))
        remove_stale_temporaries(run_dir)
        stats = run_dir / "stats.jsonl"
        kept: list[dict[str, Any]] = []
        if stats.exists():
            # After a crash the log may hold ticks past the snapshot we resume from: drop them.
            kept = read_jsonl(stats)[: self.progress.stats_lines]
            rewrite_jsonl(stats, kept)
        # Counts lines of this directory's file: a run resumed into a new directory starts it empty.
        self.progress.stats_lines = len(kept)
        self.grid_z = None
        res = self.train_set.resolution
        gw, gh = grid_shape(res, len(self.train_set))
        n = gw * gh
        idx = (torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(123)).tolist() * n)[:n]
        reals, labels = self.train_set.batch(idx)
        self.grid = (gw, gh)
        self.grid_z = torch.randn([n, self.G.z_dim], generator=torch.Generator().manual_seed(self.cfg.seed))
        self.grid_c = labels if self.G.c_dim > 0 else None
        if self.progress.cur_nimg == 0:
            save_grid(reals.numpy(), run_dir / "reals.png", gw, gh)
            save_grid(self.generate_grid(), run_dir / "fakes_init.png", gw, gh)

    @torch.no_grad()
    def generate_grid(self) -> torch.Tensor:
        out = []
        for i in range(0, len(self.grid_z), self.batch_gpu):
            z = self.grid_z[i : i + self.batch_gpu].to(self.device)
            c = None if self.grid_c is None else self.grid_c[i : i + self.batch_gpu].to(self.device)
            out.append(self.G_ema(z, c, noise_mode="const").cpu())
        return torch.cat(out)

    def _end_tick(self, tick_stats: TickStats, seconds: float, final: bool) -> None:
        cfg, prog = self.cfg, self.progress
        tick_kimg = (prog.cur_nimg - prog.tick_start_nimg) / 1000
        means = tick_stats.means(self.dist.all_reduce_mean)
        rv = self.measure_overfitting()
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
            "p": self.controller.p,
            "r_t": self.controller.tick_r_t(reduce=self.dist.all_reduce_sum),
            **rv,
            "mem_cpu_gb": _cpu_memory_gb(),
            "mem_gpu_gb": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None,
            "skipped_steps": prog.skipped_steps,
        }
        if self.dist.rank == 0:
            self.log(format_tick(record))
        snapshot = final or (prog.cur_tick % cfg.snap == 0 and prog.cur_tick > 0)
        # Advance before the snapshot: it records where the next tick starts, so a resumed run numbers on.
        prog.cur_tick += 1
        prog.tick_start_nimg = prog.cur_nimg
        if self.dist.rank == 0 and self.run_dir is not None:
            self._write_tick(record, snapshot, final)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _write_tick(self, record: dict[str, Any], snapshot: bool, final: bool) -> None:
        """The stats line, and at snapshot ticks the sample grid and the snapshot.

        A failed write (full disk, permissions) costs only that file: the run goes on and writes
        again next time. Only a failed final snapshot ends the run with an error.
        """
        kimg = self.progress.cur_nimg / 1000
        try:
            append_jsonl(self.run_dir / "stats.jsonl", record)
            self.progress.stats_lines += 1
            if snapshot:
                save_grid(self.generate_grid(), self.run_dir / f"fakes{int(kimg):06d}.png", *self.grid)
        except UserError as exc:
            self.say(f"{exc}; training goes on")
        if snapshot:
            self.save_snapshot(self.run_dir / ckpt_io.snapshot_name(kimg), final=final)

    def checkpoint_state(self) -> dict[str, Any]:
        opt_D = next(p for p in self.phases if p.name == "Dmain").opt
        return {
            "G_kwargs": self.G.init_kwargs,
            "D_kwargs": self.D.init_kwargs,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.phases[0].opt.state_dict(),
            "opt_D": opt_D.state_dict(),
            "augment_pipe": None if self.augment_pipe is None else self.augment_pipe.state_dict(),
            "controller": self.controller.state_dict(),
            "pl_mean": self.loss.pl_mean.detach().cpu(),
            "progress": asdict(self.progress),
            "rng": {"torch": self.dist.gather_rng_states(), "shared": self.shared_gen.get_state()},
            "config": self.cfg.to_dict(),
            "dataset": asdict(self.train_set.info),
        }

    def save_snapshot(self, path: Path, final: bool = False) -> None:
        """Write a snapshot; never one with non-finite weights, never over the last good one half-written."""
        last = f"the last good snapshot is {self.last_snapshot}" if self.last_snapshot else "there is no snapshot yet"
        try:
            if not all(bool(torch.isfinite(t).all()) for net in (self.G, self.D, self.G_ema) for t in net.parameters()):
                raise UserError(f"not writing {path}: the networks hold non-finite weights")
            ckpt_io.save_checkpoint(path, self.checkpoint_state())
        except UserError as exc:
            if final:
                raise UserError(f"{exc}; {last}") from None
            self.say(f"{exc}; {last}; training goes on and will try again at the next snapshot")
            return
        self.last_snapshot = path


def _cpu_memory_gb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        return float("nan")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_tick(r: dict[str, Any]) -> str:
    """One console line per tick."""
    return (
        f"tick {r['tick']:<5d} kimg {r['kimg']:<8.1f} sec/kimg {_fmt(r['sec_per_kimg'], '<7.2f')} "
        f"p {_fmt(r['p'], '.3f')} r_t {_fmt(r['r_t'], '.3f')} r_v {_fmt(r['r_v'], '.3f')} "
        f"G {_fmt(r['loss_G'], '.3f')} D {_fmt(r['loss_D'], '.3f')} "
        f"cpumem {_fmt(r['mem_cpu_gb'], '.2f')}G gpumem {_fmt(r['mem_gpu_gb'], '.2f')}G"
        + (f" skipped {r['skipped_steps']}" if r["skipped_steps"] else "")
    )


def environment_setup(cfg: TrainConfig) -> None:
    torch.backends.cudnn.benchmark = not cfg.nobench
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    os.environ.setdefault("PYTHONHASHSEED", str(cfg.seed))
