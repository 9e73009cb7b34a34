"""The process group a run trains in: one process, or N ranks under torch.distributed.

`DistContext` is the only place the trainer talks to torch.distributed. With one process
every collective is the identity, so the loop reads the same either way.

A distributed job is described by torchrun's environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT): `rank_env` reads them and
`init_process_group` joins the group, NCCL on CUDA and gloo on CPU. `launch_local` is
`--gpus N`: it starts N processes on this machine with that same environment, so every
rank runs the one code path whether torchrun or we started it.

Failure: a rank that raises exits non-zero. Its peers then fail in their next collective
(gloo notices the closed connection at once; NCCL's watchdog after COLLECTIVE_TIMEOUT),
and the launcher (torchrun's agent, or `launch_local`) stops the others and exits non-zero
within a few seconds, so a job never hangs on a dead rank.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from ada.errors import UserError

# How long a collective may wait for a peer. Everything rank 0 does alone between two
# collectives (sample grids, checkpoints) must fit in it; a rank that hangs is given up after it.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
# After one local rank fails, the others get this long to fail on their own (they usually do
# at once, in their next collective) before SIGTERM, and as long again before SIGKILL.
SHUTDOWN_GRACE_S = 5.0
# What a rank exits with after a stop by SIGINT or SIGTERM (128 + signal, see launch.train).
STOPPED_EXIT_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def default_device() -> torch.device:
    """The GPU where there is one, else the CPU: where a single process runs."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world_size > 1 and tdist.is_available() and tdist.is_initialized()

    def _all_reduce(self, t: torch.Tensor, op: tdist.ReduceOp = tdist.ReduceOp.SUM) -> torch.Tensor:
        out = t.to(self.device, copy=True)
        tdist.all_reduce(out, op=op)
        return out.to(t.device)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t) if self.active else t

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t) / self.world_size if self.active else t

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any: decisions that change the sequence of
        collectives (stopping early) must be taken by all ranks at the same step."""
        if not self.active:
            return flag
        return bool(self._all_reduce(torch.tensor([float(flag)]), op=tdist.ReduceOp.MAX))

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)

    def average_(self, t: torch.Tensor) -> None:
        """Replace a running average every rank updated with its own batch by the mean over ranks.

        Exact for averages updated by lerp (w_avg, the path-length mean): the update is linear in
        the batch mean, and the mean of the ranks' equal-sized batch means is the global mean.
        """
        if self.active:
            t.copy_(self.all_reduce_mean(t))

    def sync_w_avg(self, G: torch.nn.Module) -> None:
        """Average the tracked w_avg, so every rank holds the single-process value (see `average_`)."""
        w_avg = getattr(G.mapping, "w_avg", None)
        if w_avg is not None:
            self.average_(w_avg)

    def gather_states(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's value of `state` (an RNG state), so a resumed run continues each rank's stream.

        A collective when distributed: every rank must call it, not only the one that writes."""
        if not self.active:
            return [state]
        states = [torch.empty_like(state) for _ in range(self.world_size)]
        tdist.all_gather_object(states, state)
        return states


@dataclass(frozen=True)
class RankEnv:
    """This process's place in a distributed job, as torchrun describes it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def rank_env(environ: dict[str, str] | None = None) -> RankEnv | None:
    """The job described by torchrun's variables, or None for a plain single-process start."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    raw = {
        "RANK": env.get("RANK"),
        "WORLD_SIZE": env["WORLD_SIZE"],
        # Launchers other than torchrun may leave out the per-node variables: one node is assumed.
        "LOCAL_RANK": env.get("LOCAL_RANK", env.get("RANK")),
        "LOCAL_WORLD_SIZE": env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]),
    }
    values = {}
    for name, text in raw.items():
        try:
            values[name] = int(text)
        except (TypeError, ValueError):
            raise UserError(
                f"environment variable {name}={text!r} is not an integer; start distributed runs with "
                "torchrun (or --gpus N), which sets it"
            ) from None
    job = RankEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if not (job.world_size >= 1 and 0 <= job.rank < job.world_size and 0 <= job.local_rank < job.local_world_size):
        raise UserError(
            f"inconsistent torchrun environment: RANK={job.rank}, WORLD_SIZE={job.world_size}, "
            f"LOCAL_RANK={job.local_rank}, LOCAL_WORLD_SIZE={job.local_world_size}"
        )
    return job


def rank_device(job: RankEnv) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if job.local_rank >= count:
        raise UserError(
            f"local rank {job.local_rank} has no GPU: this machine shows {count} CUDA device"
            f"{'s' if count != 1 else ''}; start at most {count} processes per node"
        )
    return torch.device("cuda", job.local_rank)


def init_process_group(job: RankEnv, timeout: timedelta = COLLECTIVE_TIMEOUT) -> DistContext:
    """Join the job's process group (NCCL on CUDA, gloo on CPU) and return this rank's context."""
    device = rank_device(job)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
            rank=job.rank, world_size=job.world_size, timeout=timeout,
        )
    return DistContext(rank=job.rank, world_size=job.world_size, device=device)


def shutdown() -> None:
    """Leave the process group after a run that ended normally."""
    if tdist.is_initialized():
        tdist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(nproc: int, fn: Callable[..., Any], args: tuple = ()) -> Any:
    """Run fn(*args) in `nproc` fresh processes on this machine, as `torchrun --standalone
    --nproc_per_node=nproc` would, and return rank 0's result.

    `fn` must be importable (a module-level function): the processes are spawned, not forked,
    as CUDA requires. If any rank fails, the others are stopped and a UserError names it.

    A SIGTERM or SIGINT to this process (a scheduler may signal only the process it started) is
    passed on to every rank as SIGTERM, and the ranks are waited for: they stop after the same
    step, rank 0 writes the final snapshot, and this process exits with 128 + the signal it got.
    (SIGTERM, because a terminal's Ctrl-C reaches the ranks too, and a second SIGINT would make
    them quit at once; see `StopRequested`.)
    """
    port = free_port()
    results = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(
        _local_rank_main, args=(nproc, port, fn, args, results), nprocs=nproc, join=False, start_method="spawn"
    )
    received: list[int] = []

    def pass_on(signum: int, frame: Any) -> None:
        received.append(signum)
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not context.join(grace_period=SHUTDOWN_GRACE_S):
            pass
    except mp.ProcessExitedException as exc:
        if received:  # stopped on request: after rank 0's final snapshot, or before training began
            raise SystemExit(128 + received[0]) from None
        if exc.exit_code in STOPPED_EXIT_CODES:  # rank 0 was signalled itself, and stopped after its final snapshot
            raise SystemExit(exc.exit_code) from None
        how = f"signal {exc.signal_name}" if exc.signal_name else f"exit code {exc.exit_code}"
        raise UserError(
            f"rank {exc.error_index} of {nproc} failed ({how}; its message is above); the other ranks were stopped"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return None if results.empty() else results.get()


def _local_rank_main(
    local_rank: int, nproc: int, port: int, fn: Callable[..., Any], args: tuple, results: Any
) -> None:
    """One process of `launch_local`: torchrun's environment, then fn. Errors are printed here,
    in the rank's own stderr (a user mistake as one line), and end the process with exit code 1."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank), LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
    )
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # N CPU ranks share the cores; without this each would start one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        out = fn(*args)
    except UserError as exc:
        print(f"error: rank {local_rank}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    if local_rank == 0:
        results.put(out)


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
