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
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ada import checkpoint as ckpt_io
from ada.config import TrainConfig, preset_label
from ada.controller import ADA_KIMG, ADA_KIMG_TRANSFER, AdaController, r_v
from ada.data import DatasetInfo, ImageDataset, infinite_loader, no_validation_reason
from ada.distributed import DistContext
from ada.errors import UserError
from ada.evaluation import MetricReals, MetricSuite, format_results, write_results
from ada.files import append_jsonl, atomic_write_text, remove_stale_temporaries, trim_jsonl
from ada.images import grid_shape, save_grid, save_png, side_by_side, tile, to_uint8
from ada.loss import StyleGAN2Loss
from ada.loss_scaler import LossScaler
from ada.networks import Discriminator, Generator
from ada.progress import TickBar, format_tick
from ada.rundir import options_record
from ada.tfevents import TensorBoardTracker
from ada.tracking import Tracker, Trackers
from metrics.diversity import diversity_ratio

# Give up when one phase's gradients are non-finite this many times in a row.
MAX_CONSECUTIVE_BAD_STEPS = 20
# Minibatches between reads of the bad-step counters (and, with several processes, between agreements
# on a stop request): the host waits for the device this often, not in every step.
HEALTH_CHECK_INTERVAL = 16
# Images per set for the r_v measurement at each tick.
RV_BATCH = 64
# Generated and real images compared by the collapse signal at each tick.
DIVERSITY_SAMPLES = 64
# Below this diversity ratio (generated vs real pixel spread), the samples have collapsed: say so once.
COLLAPSE_THRESHOLD = 0.4
# Measured on the digits: one or two glyphs score 0.24-0.30, a few modes about 0.5, healthy runs 0.9-1.


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    interval: int
    scaler: LossScaler


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


def network_kwargs(cfg: TrainConfig, resolution: int, channels: int, c_dim: int) -> tuple[dict, dict]:
    """Constructor arguments of G and D for a fresh run (the official argument names)."""
    m = cfg.model
    common = dict(channel_base=m.channel_base, channel_max=m.channel_max, num_fp16_res=m.num_fp16_res,
                  conv_clamp=m.conv_clamp)
    G_kwargs = dict(
        z_dim=m.z_dim, c_dim=c_dim, w_dim=m.w_dim, img_resolution=resolution, img_channels=channels,
        mapping_kwargs=dict(num_layers=m.map_layers), synthesis_kwargs=dict(common),
    )
    D_kwargs = dict(
        c_dim=c_dim, img_resolution=resolution, img_channels=channels, architecture=m.d_architecture,
        epilogue_kwargs=dict(mbstd_group_size=m.mbstd_group), **common,
    )
    return apply_fp32(cfg, G_kwargs, D_kwargs)


def apply_fp32(cfg: TrainConfig, G_kwargs: dict, D_kwargs: dict) -> tuple[dict, dict]:
    """--fp32: no reduced-precision layers and no activation clamping, as the official option does."""
    G_kwargs, D_kwargs = copy.deepcopy(G_kwargs), copy.deepcopy(D_kwargs)
    if cfg.fp32:
        for kwargs in (G_kwargs["synthesis_kwargs"], D_kwargs):
            kwargs["num_fp16_res"] = 0
            kwargs["conv_clamp"] = None
    return G_kwargs, D_kwargs


def build_networks(cfg: TrainConfig, resolution: int, channels: int, c_dim: int) -> tuple[Generator, Discriminator]:
    G_kwargs, D_kwargs = network_kwargs(cfg, resolution, channels, c_dim)
    return Generator(**G_kwargs), Discriminator(**D_kwargs)


@dataclass
class ResumeSource:
    """What a --resume file provides: networks always, the training state only to continue the same data."""

    path: Path
    G_kwargs: dict
    D_kwargs: dict
    G: dict
    D: dict
    G_ema: dict
    transfer: bool
    state: dict[str, Any] | None


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
    # Fused: one kernel per step, and it skips a step flagged by the loss scaler on the device.
    return torch.optim.Adam(
        params, lr=o.lr * ratio, betas=(o.beta1**ratio, o.beta2**ratio), eps=o.eps, fused=True
    )


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Adam's moments and step counts from a checkpoint, keeping this optimiser's fused implementation.

    `load_state_dict` also takes the saved implementation flags; a checkpoint written by an unfused
    Adam would switch off the fused kernel that the device-side step skip relies on.
    """
    implementation = [{key: group[key] for key in ("fused", "foreach")} for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, flags in zip(opt.param_groups, implementation, strict=True):
        group.update(flags)


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


def finite_or_none(value: Any) -> Any:
    """Non-finite floats become null: stats.jsonl stays strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host-to-GPU copy that does not make the host wait for the GPU to finish its queue."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_float_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return to_device(images, device).to(torch.float32) / 127.5 - 1


def run_description(cfg: TrainConfig, data_name: str) -> str:
    parts = [data_name, preset_label(cfg.cfg)]
    if cfg.cond:
        parts.append("cond")
    if cfg.mirror:
        parts.append("mirror")
    parts.append(cfg.aug.mode if cfg.aug.mode != "fixed" else f"p{cfg.aug.p:g}")
    if cfg.aug.mode == "ada":
        parts.append(f"target{cfg.aug.target:g}")
    if cfg.aug.mode == "diffaug":
        parts.append(cfg.aug.diffaug_policy.replace(",", "-"))
    elif cfg.aug.mode != "noaug":
        parts.append(cfg.aug.pipe)
    if cfg.aug.apa:
        parts.append("apa")
    if cfg.loss.lecam:
        parts.append(f"lecam{cfg.loss.lecam:g}")
    if cfg.resume:
        parts.append("resume")
    if cfg.freezed:
        parts.append(f"freezed{cfg.freezed}")
    return "-".join(parts)


def make_run_dir(outdir: Path, desc: str) -> Path:
    """outdir/NNNNN-desc with the next free number.

    Processes started together may pick the same number: the one whose mkdir loses takes the next,
    and the one after, without listing the folder again (a network file system's listing may lag
    behind its mkdir for a while).
    """
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        ids = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"([0-9]+)-", p.name))]
        number = max(ids, default=-1) + 1
        while True:
            run_dir = outdir / f"{number:05d}-{desc}"
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                number += 1
    except OSError as exc:
        raise UserError(f"--outdir={outdir}: cannot create a run directory in it ({exc.strerror})") from None


class StopRequested:
    """SIGTERM / Ctrl-C ask the loop to stop after the current step and write a final snapshot.

    Ctrl-C pressed again quits at once. A repeated SIGTERM does not: one request can reach a process
    more than once (a scheduler may signal every process of a job, and the `--gpus N` launcher passes
    the signal it gets on to its ranks, which a terminal's Ctrl-C reaches as well).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._interrupted = False
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
        if signum == signal.SIGINT:
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
        if not self.requested:
            self.requested = True
            self.signum = signum


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
        self.reals_tile: np.ndarray | None = None  # the reals grid as one image, beside which samples are shown
        self.start_time = time.time()  # reset when run() starts
        # The signal that stopped the run early (another rank's stop counts as SIGTERM); None if it finished.
        self.stop_signal: int | None = None

        # Latents and labels are drawn for the global batch from a generator every rank shares, and each
        # rank takes its slice: N processes see the same latents as one process with the whole batch.
        self.shared_gen = torch.Generator().manual_seed(cfg.seed)

        info = train_set.info
        source = self._read_resume(cfg.resume, info) if cfg.resume else None
        self.transfer = source is not None and source.transfer
        self.resumed_from = None if source is None else source.path
        if source is None:
            G_kwargs, D_kwargs = network_kwargs(cfg, info.resolution, info.channels, info.c_dim)
        else:
            # The architecture comes from the checkpoint; only precision follows this run's flags.
            G_kwargs, D_kwargs = apply_fp32(cfg, source.G_kwargs, source.D_kwargs)
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
        self._apply_precision()
        self.dist.broadcast_module(self.G)
        self.dist.broadcast_module(self.D)
        self.dist.broadcast_module(self.G_ema)

        self.augment_pipe, self.adaptive_pipe = self._build_augment_pipe()
        self.controller = self._build_controller()
        self.apa_controller = self._build_apa_controller()
        d_params = freeze_d_layers(self.D, cfg.freezed)
        self.loss = StyleGAN2Loss(
            self.G, self.D, self.augment_pipe, r1_gamma=cfg.loss.r1_gamma, pl_weight=cfg.loss.pl_weight,
            pl_decay=cfg.loss.pl_decay, pl_batch_shrink=cfg.loss.pl_batch_shrink, style_mixing=cfg.loss.style_mixing,
            compile=cfg.compile, lecam_weight=cfg.loss.lecam, lecam_decay=cfg.loss.lecam_decay,
        )
        self.phases = self._build_phases(list(self.G.parameters()), d_params)
        if source is not None and source.state is not None:
            self._restore_training_state(source.path, source.state)
        # Official transfer runs drop the EMA rampup, which would otherwise overwrite G_ema at once.
        self.ema_rampup = None if self.transfer else cfg.optim.ema_rampup
        self.diversity_probe = self._diversity_probe()
        self.data_iter = infinite_loader(
            train_set, cfg.batch, dist.rank, dist.world_size, cfg.seed, cfg.workers, start_batch=self.progress.batch_idx
        )

    # ----- setup -----

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

    def _read_resume(self, spec: str, info: DatasetInfo) -> ResumeSource:
        """Continue a run on the same data exactly; on other data (transfer) take the weights only."""
        path = ckpt_io.resolve_checkpoint_path(spec)
        if ckpt_io.is_our_checkpoint(path):
            state = ckpt_io.load_checkpoint(path)
            kwargs = state["G_kwargs"]
            self._check_compatible(path, kwargs["img_resolution"], kwargs["img_channels"], kwargs["c_dim"], info)
            same_data = state["dataset"].get("fingerprint") == info.fingerprint
            if not same_data and Path(spec).is_dir():
                raise UserError(
                    f"--data={self.cfg.data} no longer holds the images the run in {spec} was trained on (they "
                    f"changed); to train on them as they are, fine-tune into a new run: --resume={path}"
                )
            source = ResumeSource(
                path, state["G_kwargs"], state["D_kwargs"], state["G"], state["D"], state["G_ema"],
                transfer=not same_data or bool(state.get("transfer", False)), state=state if same_data else None,
            )
            if same_data:
                self._print(f"Resuming from {path} at {state['progress']['cur_nimg'] / 1000:g} kimg")
                self.last_snapshot = path
            else:
                self._print(f"Fine-tuning from {path} (trained on other data): weights only, from 0 kimg")
            return source
        from ada.official import load_official_pickle

        imported = load_official_pickle(path)
        G = imported.G
        self._check_compatible(path, G.img_resolution, G.img_channels, G.c_dim, info)
        self._print(f"Imported official network pickle {path}:\n{imported.report}")
        return ResumeSource(
            path, G.init_kwargs, imported.D.init_kwargs, G.state_dict(), imported.D.state_dict(),
            imported.G_ema.state_dict(), transfer=True, state=None,
        )

    @staticmethod
    def _check_compatible(path: Path, resolution: int, channels: int, c_dim: int, info: Any) -> None:
        if (resolution, channels, c_dim) == (info.resolution, info.channels, info.c_dim):
            return
        convert = []
        if resolution != info.resolution:
            convert.append(f"--resolution {resolution}")
        if channels != info.channels:
            convert.append(f"--channels {channels}")
        if convert:
            fix = f"convert the data with `ada dataset --source DATA --dest out.zip {' '.join(convert)}`"
        else:
            fix = "leave --cond out (the network is unconditional)" if c_dim == 0 else (
                f"give --cond=1 with labels of {c_dim} classes")
        raise UserError(
            f"{path} was trained on {resolution}x{resolution}x{channels} images with {c_dim} classes, but "
            f"--data is {info.resolution}x{info.resolution}x{info.channels} with {info.c_dim} classes; "
            f"{fix}, or choose a matching checkpoint"
        )

    def uses_float16(self) -> bool:
        """Whether any block computes in float16 (which needs loss scaling): CUDA, mixed precision, not bf16."""
        blocks = [*self.G.synthesis.children(), *self.D.children()]
        return (
            self.device.type == "cuda" and not self.cfg.bf16
            and any(getattr(b, "use_fp16", False) for b in blocks)
        )

    def _apply_precision(self) -> None:
        reduced = torch.bfloat16 if self.cfg.bf16 else torch.float16
        memory_format = torch.channels_last if self.cfg.nhwc else torch.contiguous_format
        for net in (self.G.synthesis, self.G_ema.synthesis, self.D):
            net.reduced_dtype = reduced
            net.memory_format = memory_format

    def _build_augment_pipe(self) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
        """The module every image D sees passes through, and the ADA pipe in it whose p follows the
        controller (None for DiffAugment, which has no p; a composition would return both)."""
        a = self.cfg.aug
        if a.mode == "noaug":
            return None, None
        if a.mode == "diffaug":
            from augment.diffaug import DiffAugment

            return DiffAugment(a.diffaug_policy).to(self.device), None
        from augment import AugmentPipe
        from augment.extra_stages import parse_extra

        pipe = AugmentPipe(preset=a.pipe, extra=parse_extra(a.extra)).to(self.device)
        pipe.p.copy_(torch.as_tensor(a.p))
        return pipe, pipe

    def _ada_kimg(self) -> float:
        a = self.cfg.aug
        if a.ada_kimg is None:
            # Resolved here, where it is known whether this is a transfer run: the record shows the value used.
            a.ada_kimg = ADA_KIMG_TRANSFER if self.transfer else ADA_KIMG
        return a.ada_kimg

    def _build_controller(self) -> AdaController:
        a = self.cfg.aug
        return AdaController(
            target=a.target, interval=a.ada_interval, ada_kimg=self._ada_kimg(), p=a.p, p_max=a.p_max,
            heuristic=a.heuristic, adjust=a.mode == "ada", start_kimg=a.ada_start_kimg,
        )

    def _build_apa_controller(self) -> AdaController | None:
        """APA's probability, moved by ADA's law and heuristic; its target and speed default to ADA's."""
        a = self.cfg.aug
        if not a.apa:
            return None
        # Resolved in the configuration, as --ada-kimg is, so that the record shows the values used.
        if a.apa_target is None:
            a.apa_target = a.target
        if a.apa_kimg is None:
            a.apa_kimg = self._ada_kimg()
        return AdaController(
            target=a.apa_target, interval=a.ada_interval, ada_kimg=a.apa_kimg, heuristic=a.heuristic,
            start_kimg=a.ada_start_kimg,
        )

    def _build_phases(self, g_params: list, d_params: list) -> list[Phase]:
        cfg = self.cfg
        phases = []
        float16 = self.uses_float16()
        for name, module, params, reg_interval in (
            ("G", self.G, g_params, cfg.loss.g_reg_interval),
            ("D", self.D, d_params, cfg.loss.d_reg_interval),
        ):
            opt = lazy_adam(params, cfg, reg_interval)
            phases.append(Phase(f"{name}main", module, params, opt, 1, LossScaler(self.device, float16)))
            if name == "G" and cfg.loss.pl_weight == 0:
                continue
            if name == "D" and cfg.loss.r1_gamma == 0:
                continue
            phases.append(Phase(f"{name}reg", module, params, opt, reg_interval, LossScaler(self.device, float16)))
        return phases

    def _restore_training_state(self, path: Path, state: dict[str, Any]) -> None:
        saved_freezed = state["config"].get("freezed", 0)
        if saved_freezed != self.cfg.freezed:
            raise UserError(
                f"{path} was trained with --freezed={saved_freezed}; resume it with the same value "
                "(or fine-tune from it on other data)"
            )
        opt_G, opt_D = self.phases[0].opt, next(p for p in self.phases if p.name == "Dmain").opt
        ckpt_io.check_optimizer_state(path, state["opt_G"], opt_G, "opt_G")
        ckpt_io.check_optimizer_state(path, state["opt_D"], opt_D, "opt_D")
        load_optimizer_state(opt_G, state["opt_G"])
        load_optimizer_state(opt_D, state["opt_D"])
        self.controller.load_state_dict(state["controller"])
        # Absent from checkpoints written before these options, or by a run without them: they start afresh.
        if self.apa_controller is not None and state.get("apa_controller") is not None:
            self.apa_controller.load_state_dict(state["apa_controller"])
        if self.loss.lecam is not None and state.get("lecam") is not None:
            self.loss.lecam.load_state_dict(state["lecam"])
        self.loss.pl_mean.copy_(state["pl_mean"])
        for phase in self.phases:
            if phase.name in state.get("loss_scalers", {}):
                phase.scaler.load_state_dict(state["loss_scalers"][phase.name])
        known = {f.name for f in fields(Progress)}
        self.progress = Progress(**{k: v for k, v in state["progress"].items() if k in known})
        # The snapshot was taken at the end of its tick: continue with the next one.
        self.progress.cur_tick += 1
        self.progress.tick_start_nimg = self.progress.cur_nimg
        self.shared_gen.set_state(state["rng"]["shared"])
        rank = self.dist.rank
        torch.set_rng_state(state["rng"]["torch"][rank % len(state["rng"]["torch"])])
        if self.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][rank % len(state["rng"]["cuda"])], self.device)

    def _diversity_probe(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Fixed latents (with labels drawn like training's) and fixed reals for the collapse signal."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        n = min(DIVERSITY_SAMPLES, len(self.train_set.names))
        idx = torch.randperm(len(self.train_set.names), generator=gen)[:n].tolist()
        reals, labels = self.train_set.batch(idx)
        z = torch.randn([n, self.G.z_dim], generator=gen)
        return z, labels if self.G.c_dim > 0 else None, reals.to(torch.float32) / 127.5 - 1

    @torch.no_grad()
    def measure_diversity(self) -> float | None:
        """The collapse signal: spread of G_ema's samples over the spread of the reals (see
        metrics.diversity.diversity_ratio), warned about once when it drops below COLLAPSE_THRESHOLD."""
        z, c, reals = self.diversity_probe
        if len(z) < 2:
            return None
        fakes = torch.cat([
            self.G_ema(zb.to(self.device), None if c is None else cb.to(self.device), noise_mode="const").cpu()
            for zb, cb in zip(z.split(self.batch_gpu), (c if c is not None else z).split(self.batch_gpu), strict=True)
        ])
        ratio = diversity_ratio(fakes, reals)
        if ratio < COLLAPSE_THRESHOLD and self.progress.cur_tick > 0:
            self.say(
                f"the samples have collapsed: their diversity is {ratio:.2f} of the real images' (below "
                f"{COLLAPSE_THRESHOLD}); look at reals_and_fakes.png. A stronger R1 penalty (--gamma) is the usual "
                "cure; on 200 digits --gamma=0.01 collapsed to one glyph where 1 did not",
                key="collapse",
            )
        return ratio

    # ----- the loop -----

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

    def train_step(self, tick_stats: TickStats) -> None:
        """One minibatch: every due phase over all rounds of batch_gpu images, then EMA and the p update."""
        real_img, real_c = next(self.data_iter)
        real_img = to_float_images(real_img, self.device).split(self.batch_gpu)
        real_c = to_device(real_c, self.device).split(self.batch_gpu) if self.G.c_dim > 0 else None
        rounds = len(real_img)
        if self.adaptive_pipe is not None:
            self.adaptive_pipe.p.fill_(self.controller.p)
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
                    gain=phase.scaler.scale_loss(phase.interval / rounds),
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

    @torch.no_grad()
    def measure_overfitting(self) -> dict[str, float | None]:
        """Mean raw logits of D on training reals, withheld reals and fakes (through the pipe at the current p).

        Runs on its own random streams, so how often it runs does not change the training trajectory.
        """
        if self.val_set is None:
            self.say(f"{no_validation_reason(len(self.eval_set.names), self.cfg.val)}: r_v is not measured")
            return {"logit_train": None, "logit_val": None, "logit_gen": None, "r_v": None}
        group = max(min(self.cfg.model.mbstd_group, self.batch_gpu), 1)
        n = min(RV_BATCH, len(self.val_set.names), len(self.train_set.names))
        n = max(n - n % group, 1)
        gen = torch.Generator().manual_seed(self.cfg.seed + self.progress.cur_tick)
        val_idx = torch.randperm(len(self.val_set.names), generator=gen)[:n].tolist()
        train_idx = torch.randperm(len(self.train_set.names), generator=gen)[:n].tolist()
        z = torch.randn([n, self.G.z_dim], generator=gen)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed + self.progress.cur_tick)
            sums = {"logit_train": 0.0, "logit_val": 0.0, "logit_gen": 0.0}
            for lo in range(0, n, self.batch_gpu):
                part = slice(lo, min(lo + self.batch_gpu, n))
                tr_img, tr_c = self.train_set.batch(train_idx[part])
                val_img, val_c = self.val_set.batch(val_idx[part])
                conditional = self.G.c_dim > 0
                c = tr_c.to(self.device) if conditional else None
                c_val = val_c.to(self.device) if conditional else None
                ws = self.G.mapping(z[part].to(self.device), c, update_w_avg=False)
                for key, img, labels in (
                    ("logit_train", to_float_images(tr_img, self.device), c),
                    ("logit_val", to_float_images(val_img, self.device), c_val),
                    ("logit_gen", self.G.synthesis(ws), c),
                ):
                    sums[key] += float(self.loss.run_D(img, labels).sum())
        logits = {k: float(self.dist.all_reduce_mean(torch.tensor([v / n]))) for k, v in sums.items()}
        logits["r_v"] = r_v(logits["logit_train"], logits["logit_val"], logits["logit_gen"])
        self.controller.last_r_v = logits["r_v"]
        if self.apa_controller is not None:
            self.apa_controller.last_r_v = logits["r_v"]
        return logits

    def run(self, run_dir: Path | None) -> None:
        """Train to cfg.kimg, writing into `run_dir` (rank 0; None writes nothing)."""
        self.run_dir = run_dir
        self.start_time = time.time()
        cfg = self.cfg
        w = cfg.wandb
        self.tracker = (
            Trackers([
                Tracker.create(
                    run_dir=run_dir, config=cfg.to_dict(), project=w.project, entity=w.entity, group=w.group,
                    name=w.name, mode=w.mode, rank=self.dist.rank,
                ),
                TensorBoardTracker.create(run_dir, cfg.tensorboard, rank=self.dist.rank),
            ])
            if run_dir is not None
            else Tracker()
        )
        self.metric_suite = (
            MetricSuite(cfg.metrics, cfg.features, cfg.ppl_net, self.device, self.say, pr_net=cfg.pr_net,
                        xflip=cfg.mirror)
            if cfg.metrics
            else None
        )
        exit_code = 1
        total_nimg = int(cfg.kimg * 1000)
        # Within a tick, a progress bar on an interactive terminal (rank 0); logs get only the tick lines.
        self.bar = TickBar(total_nimg, enabled=None if self.dist.rank == 0 else False)
        tick_nimg = int(cfg.tick * 1000)
        stop = StopRequested()
        stop.install()
        try:
            if self.dist.rank == 0 and self.run_dir is not None:
                self._start_run_dir()
            tick_stats = TickStats()
            tick_start = time.time()
            self.bar.start(self.progress.cur_tick, self.progress.cur_nimg, self._tick_end_nimg(tick_nimg, total_nimg))
            while True:
                self.train_step(tick_stats)
                self.bar.update(self.progress.cur_nimg)
                if self.progress.batch_idx % HEALTH_CHECK_INTERVAL == 0:
                    self.check_health()
                stopping = self._agree_to_stop(stop.requested)
                done = self.progress.cur_nimg >= total_nimg or stopping
                # Tick 0 ends after the first step, as in the official loop: a snapshot and a console
                # line right away show that the run works.
                first = self.progress.cur_tick == 0
                if not done and not first and self.progress.cur_nimg < self.progress.tick_start_nimg + tick_nimg:
                    continue
                self.bar.close()
                self._end_tick(tick_stats, time.time() - tick_start, final=done, stopping=stop.requested)
                tick_stats = TickStats()
                tick_start = time.time()
                if done:
                    break
                self.bar.start(self.progress.cur_tick, self.progress.cur_nimg,
                               self._tick_end_nimg(tick_nimg, total_nimg))
            if stopping:
                self.stop_signal = stop.signum or signal.SIGTERM
                self.log("Stopped on request; final snapshot written.")
            exit_code = 0
        finally:
            self.bar.close()
            stop.uninstall()
            self.tracker.finish(exit_code=exit_code)

    def _tick_end_nimg(self, tick_nimg: int, total_nimg: int) -> int:
        """Where the tick now starting ends: after one step for tick 0, else a tick later or at the end."""
        prog = self.progress
        if prog.cur_tick == 0:
            return min(prog.cur_nimg + self.cfg.batch, total_nimg)
        return min(prog.tick_start_nimg + tick_nimg, total_nimg)

    def _agree_to_stop(self, requested: bool) -> bool:
        """All ranks must stop after the same step, whichever of them saw the signal. With several
        processes agreeing is a collective that waits for the GPU, so they agree every few steps."""
        if not self.dist.active:
            return requested
        if self.progress.batch_idx % HEALTH_CHECK_INTERVAL:
            return False
        return self.dist.any_rank(requested)

    def _start_run_dir(self) -> None:
        run_dir = self.run_dir
        atomic_write_text(run_dir / "training_options.json", json.dumps(options_record(self.cfg, run_dir), indent=2))
        remove_stale_temporaries(run_dir)
        stats = run_dir / "stats.jsonl"
        kept = 0
        if stats.exists():
            # After a crash the log may hold ticks past the snapshot we resume from: drop them.
            kept, damaged = trim_jsonl(stats, self.progress.stats_lines)
            if damaged:
                self.say(f"{damaged} damaged line(s) of {stats} set aside in {stats.name}.corrupt")
        # Counts lines of this directory's file: a run resumed into a new directory starts it empty.
        self.progress.stats_lines = kept
        self.grid_z = None
        res = self.train_set.resolution
        gw, gh = grid_shape(res, len(self.train_set))
        n = gw * gh
        idx = (torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(123)).tolist() * n)[:n]
        reals, labels = self.train_set.batch(idx)
        self.grid = (gw, gh)
        self.grid_z = torch.randn([n, self.G.z_dim], generator=torch.Generator().manual_seed(self.cfg.seed))
        self.grid_c = labels if self.G.c_dim > 0 else None
        self.reals_tile = tile(reals.numpy().transpose(0, 2, 3, 1), gw, gh)
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

    def _end_tick(self, tick_stats: TickStats, seconds: float, final: bool, stopping: bool = False) -> None:
        cfg, prog = self.cfg, self.progress
        self.check_health()
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
            "loss_D_lecam": means.get("loss_D_lecam"),
            "p": self.controller.p,
            "p_apa": None if self.apa_controller is None else self.apa_controller.p,
            "r_t": self.controller.tick_r_t(reduce=self.dist.all_reduce_sum),
            **rv,
            "diversity": self.measure_diversity(),
            "mem_cpu_gb": _cpu_memory_gb(),
            "mem_gpu_gb": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None,
            "skipped_steps": prog.skipped_steps,
        }
        record = {key: finite_or_none(value) for key, value in record.items()}
        if self.dist.rank == 0:
            self.log(format_tick(record, elapsed_s=time.time() - self.start_time))
            self.tracker.log_tick(record)
        snapshot = final or prog.cur_tick % cfg.snap == 0
        if self.dist.rank == 0 and self.run_dir is not None:
            try:
                append_jsonl(self.run_dir / "stats.jsonl", record)
                prog.stats_lines += 1
            except UserError as exc:  # a full disk: the snapshot below may still fit, or the next one
                self.say(f"{exc}; training goes on")
        if snapshot:
            kimg = prog.cur_nimg / 1000
            rng_states = self.rng_states()  # a collective: on every rank
            name = None
            if self.dist.rank == 0 and self.run_dir is not None:
                tag = ckpt_io.snapshot_tag(self.run_dir, prog.cur_nimg)
                name = f"network-snapshot-{tag}.pt"
                grid_path = self.run_dir / f"fakes{tag}.png"
                try:
                    fakes = self.generate_grid()
                    save_grid(fakes, grid_path, *self.grid)
                    # The latest samples beside the reals: the one picture that says whether training works.
                    both = side_by_side(self.reals_tile, tile(to_uint8(fakes), *self.grid), self.train_set.resolution)
                    save_png(both, self.run_dir / "reals_and_fakes.png")
                    self.tracker.log_image(kimg, "fakes", grid_path)
                    self.last_grid = grid_path
                except UserError as exc:
                    self.say(f"{exc}; training goes on")
                self.save_snapshot(self.run_dir / name, rng_states, final=final)
            if not stopping:  # a stop request (preemption) leaves little time: metrics can run after resume
                self.evaluate_metrics(name, kimg)
        prog.cur_tick += 1
        prog.tick_start_nimg = prog.cur_nimg
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

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

    def rng_states(self) -> dict[str, list[torch.Tensor] | None]:
        """Every rank's CPU (and CUDA) RNG state. A collective when distributed: call it on every rank."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {
            "torch": self.dist.gather_states(torch.get_rng_state()),
            "cuda": None if cuda is None else self.dist.gather_states(cuda),
        }

    def checkpoint_state(self, rng_states: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole training state; `rng_states` from `rng_states()`, which with several ranks every
        rank must have called (default: gather now, fine for one process)."""
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
            "apa_controller": None if self.apa_controller is None else self.apa_controller.state_dict(),
            "lecam": None if self.loss.lecam is None else self.loss.lecam.state_dict(),
            "pl_mean": self.loss.pl_mean.detach().cpu(),
            "loss_scalers": {phase.name: phase.scaler.state_dict() for phase in self.phases},
            "progress": asdict(self.progress),
            "rng": {**(rng_states or self.rng_states()), "shared": self.shared_gen.get_state()},
            "transfer": self.transfer,
            "config": self.cfg.to_dict(),
            "dataset": asdict(self.train_set.info),
        }

    def save_snapshot(self, path: Path, rng_states: dict[str, Any] | None = None, final: bool = False) -> None:
        """Write a snapshot; never one with non-finite weights, never over the last good one half-written.

        A failed write is a warning while training goes on; a failed final snapshot ends the run with an error.
        """
        last = f"the last good snapshot is {self.last_snapshot}" if self.last_snapshot else "there is no snapshot yet"
        try:
            if not all(bool(torch.isfinite(t).all()) for net in (self.G, self.D, self.G_ema) for t in net.parameters()):
                raise UserError(f"not writing {path}: the networks hold non-finite weights")
            ckpt_io.save_checkpoint(path, self.checkpoint_state(rng_states))
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


def environment_setup(cfg: TrainConfig) -> None:
    torch.backends.cudnn.benchmark = not cfg.nobench
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
