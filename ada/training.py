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
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
from ada.evaluation import MetricReals, MetricSuite, format_results, write_results
from ada.files import append_jsonl, atomic_write_text, read_jsonl, rewrite_jsonl
from ada.images import grid_shape, save_grid
from ada.loss import StyleGAN2Loss
from ada.networks import Discriminator, Generator
from ada.progress import format_tick
from ada.tracking import Tracker

# Give up when this many consecutive steps produced non-finite gradients.
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
    consecutive_bad: int = 0
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
        self.log = log if dist.rank == 0 else (lambda msg: None)
        self.batch_gpu = cfg.batch // dist.world_size
        self.progress = Progress()
        self.said_once: set[str] = set()

        # Latents and labels are drawn for the global batch from a generator every rank shares, and each
        # rank takes its slice: N processes see the same latents as one process with the whole batch.
        self.shared_gen = torch.Generator().manual_seed(cfg.seed)

        info = train_set.info
        torch.manual_seed(cfg.seed)  # the same initial networks for any number of ranks
        self.G, self.D = build_networks(cfg, info.resolution, info.channels, info.c_dim)
        # From here each rank draws its own noise inputs, augmentations and path-length probes.
        torch.manual_seed(cfg.seed * dist.world_size + dist.rank)
        np.random.seed((cfg.seed * dist.world_size + dist.rank) % 2**32)
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
        self.progress = Progress(**state["progress"])
        self.progress.tick_start_nimg = self.progress.cur_nimg
        self.progress.consecutive_bad = 0
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
            stats = self.loss.accumulate_gradients(
                phase.name, real_img, real_c, gen_z[i], None if gen_c is None else gen_c[i], gain=phase.interval
            )
            for p in phase.params:
                p.requires_grad_(False)
            if "real_signs" in stats:
                self.controller.accumulate(stats.pop("real_signs"))
            for key, value in stats.items():
                tick_stats.add(key, value)
            self._apply_gradients(phase)
            if phase.name == "Greg":
                self.dist.average_(self.loss.pl_mean)
        self.progress.cur_nimg += self.cfg.batch
        self.progress.batch_idx += 1
        self.dist.sync_w_avg(self.G)
        beta = ema_beta(self.cfg.batch, self.progress.cur_nimg, self.cfg.optim.ema_kimg, self.cfg.optim.ema_rampup)
        update_ema(self.G_ema, self.G, beta)
        self.controller.step(self.progress.batch_idx, self.cfg.batch, reduce=self.dist.all_reduce_sum)
        message = self.controller.leak_warning()
        if message:
            self.say(message)

    def _apply_gradients(self, phase: Phase) -> None:
        """Average gradients across ranks and step, unless any is non-finite: then skip the step."""
        params = [p for p in phase.params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        flat = self.dist.all_reduce_mean(flat)
        if not bool(torch.isfinite(flat).all()):
            self.progress.skipped_steps += 1
            self.progress.consecutive_bad += 1
            phase.opt.zero_grad(set_to_none=True)
            if self.progress.consecutive_bad >= MAX_CONSECUTIVE_BAD_STEPS:
                raise UserError(
                    f"training diverged: {self.progress.consecutive_bad} consecutive steps had non-finite "
                    f"gradients at {self.progress.cur_nimg / 1000:.1f} kimg; the last snapshot in {self.run_dir} "
                    "is intact; resume from it with a lower learning rate or --gamma"
                )
            return
        self.progress.consecutive_bad = 0
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p)
        phase.opt.step()

    def say(self, message: str) -> None:
        """A warning printed once per run, and recorded in the run directory's log."""
        if message in self.said_once:
            return
        self.said_once.add(message)
        self.log(f"warning: {message}")
        if self.run_dir is not None and self.dist.rank == 0:
            append_jsonl(self.run_dir / "log.jsonl", {"kimg": self.progress.cur_nimg / 1000, "warning": message})

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
        for key, img, labels in (
            ("logit_train", to_float_images(tr_img, self.device), c(tr_c)),
            ("logit_val", to_float_images(val_img, self.device), c(val_c)),
            ("logit_gen", self.G(z, c(tr_c), noise_mode="random"), c(tr_c)),
        ):
            logits[key] = float(self.dist.all_reduce_mean(self.loss.run_D(img, labels).mean().reshape(1)))
        logits["r_v"] = r_v(logits["logit_train"], logits["logit_val"], logits["logit_gen"])
        self.controller.last_r_v = logits["r_v"]
        return logits

    def run(self, run_dir: Path | None) -> None:
        """Train to cfg.kimg, writing into `run_dir` (rank 0; None writes nothing)."""
        self.run_dir = run_dir
        self.start_time = time.time()
        cfg = self.cfg
        w = cfg.wandb
        self.tracker = (
            Tracker.create(
                run_dir=run_dir, config=cfg.to_dict(), project=w.project, entity=w.entity, group=w.group,
                name=w.name, mode=w.mode, rank=self.dist.rank,
            )
            if run_dir is not None
            else Tracker()
        )
        self.metric_suite = (
            MetricSuite(cfg.metrics, cfg.features, cfg.ppl_net, self.device, self.say) if cfg.metrics else None
        )
        exit_code = 1
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
                # All ranks must stop after the same step, whichever of them saw the signal.
                stopping = self.dist.any_rank(stop.requested)
                done = self.progress.cur_nimg >= total_nimg or stopping
                # Tick 0 ends after the first step, as in the official loop: a snapshot and a console
                # line right away show that the run works.
                first = self.progress.cur_tick == 0
                if not done and not first and self.progress.cur_nimg < self.progress.tick_start_nimg + tick_nimg:
                    continue
                self._end_tick(tick_stats, time.time() - tick_start, final=done)
                tick_stats = TickStats()
                tick_start = time.time()
                if done:
                    break
            if stopping:
                self.log("Stopped on request; final snapshot written.")
            exit_code = 0
        finally:
            stop.uninstall()
            self.tracker.finish(exit_code=exit_code)

    def _start_run_dir(self) -> None:
        run_dir = self.run_dir
        atomic_write_text(run_dir / "training_options.json", json.dumps(self.cfg.to_dict(), indent=2))
        stats = run_dir / "stats.jsonl"
        if stats.exists():
            # After a crash the log may hold ticks past the snapshot we resume from: drop them.
            rewrite_jsonl(stats, read_jsonl(stats)[: self.progress.stats_lines])
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
            self.tracker.log_image(0.0, "reals", run_dir / "reals.png")
            self.tracker.log_image(0.0, "fakes_init", run_dir / "fakes_init.png")

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
            self.log(format_tick(record, elapsed_s=time.time() - self.start_time))
            self.tracker.log_tick(record)
        snapshot = final or prog.cur_tick % cfg.snap == 0
        if self.dist.rank == 0 and self.run_dir is not None:
            append_jsonl(self.run_dir / "stats.jsonl", record)
            prog.stats_lines += 1
        if snapshot:
            kimg = prog.cur_nimg / 1000
            name = ckpt_io.snapshot_name(kimg)
            rng_states = self.dist.gather_rng_states()  # a collective: on every rank
            if self.dist.rank == 0 and self.run_dir is not None:
                grid_path = self.run_dir / f"fakes{int(kimg):06d}.png"
                save_grid(self.generate_grid(), grid_path, *self.grid)
                self.tracker.log_image(kimg, "fakes", grid_path)
                self.save_snapshot(self.run_dir / name, rng_states)
            self.evaluate_metrics(name, kimg)
        prog.cur_tick += 1
        prog.tick_start_nimg = prog.cur_nimg
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def evaluate_metrics(self, snapshot: str, kimg: float) -> None:
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

    def checkpoint_state(self, rng_states: list[torch.Tensor] | None = None) -> dict[str, Any]:
        """The whole training state; `rng_states` from `DistContext.gather_rng_states`, which with
        several ranks every rank must have called (default: gather now, fine for one process)."""
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
            "rng": {"torch": rng_states or self.dist.gather_rng_states(), "shared": self.shared_gen.get_state()},
            "config": self.cfg.to_dict(),
            "dataset": asdict(self.train_set.info),
        }

    def save_snapshot(self, path: Path, rng_states: list[torch.Tensor] | None = None) -> None:
        try:
            ckpt_io.save_checkpoint(path, self.checkpoint_state(rng_states))
        except UserError as exc:
            self.say(f"{exc}; training goes on and will try again at the next snapshot")


def _cpu_memory_gb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        return float("nan")


def environment_setup(cfg: TrainConfig) -> None:
    torch.backends.cudnn.benchmark = not cfg.nobench
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    os.environ.setdefault("PYTHONHASHSEED", str(cfg.seed))
