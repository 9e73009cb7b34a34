"""What the benchmark scripts share: peak memory readings, and each side of a comparison in its own process.

Peak resident memory (RSS) is the kernel's high-water mark, VmHWM in /proc/self/status. Linux lets a
process reset that mark (writing 5 to /proc/self/clear_refs), so one process can report the peak of
each part it times. Memory that one part frees may stay with the allocator and serve the next part,
though, so two implementations compared with each other run in separate processes (`Sides`).
On CUDA, the peak of torch's allocator (torch.cuda.max_memory_allocated) is given as well.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


def rss_mib() -> float:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Resident memory high-water mark of this process (since its start or the last reset)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Set the high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class Memory:
    peak_rss: float  # MiB
    above_start: float  # MiB of that peak above the RSS at the window's start
    gpu_peak: float | None  # MiB, torch.cuda.max_memory_allocated; None off CUDA
    reset_failed: bool  # a reset of the RSS peak was asked for and refused: the peak is the whole process's

    def describe(self, start: str = "setup") -> str:
        text = f"RSS {self.peak_rss:.0f} MiB ({self.above_start:.0f} MiB above {start})"
        if self.reset_failed:
            text += " [peak since the process started: this kernel refused the reset]"
        if self.gpu_peak is not None:
            text += f", GPU peak allocated {self.gpu_peak:.0f} MiB"
        return text


class MemoryWindow:
    """Peak memory from now on. reset=False keeps the process's earlier RSS peak in the reading."""

    def __init__(self, device: torch.device, reset: bool = True):
        self.device = device
        self.start = rss_mib()
        self.reset_failed = reset and not reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def read(self) -> Memory:
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        peak = peak_rss_mib()
        return Memory(peak, peak - self.start, gpu, self.reset_failed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner(Protocol):
    def step(self) -> None: ...


def _worker(factory: Callable[[], Runner], device_name: str, threads: int | None, warmup: int, conn: Any) -> None:
    """One side, in its own process: builds, warms up, then runs what the parent asks."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    runner = factory()
    # The RSS peak keeps the build (a run needs that memory too); "above setup" is what stepping adds.
    window = MemoryWindow(device, reset=False)
    for _ in range(warmup):
        runner.step()
    sync(device)
    conn.send("ready")
    while True:
        try:
            command, n = conn.recv()
        except EOFError:  # the parent is gone
            return
        if command == "run":
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                runner.step()
            sync(device)
            conn.send((time.perf_counter() - start, time.process_time() - start_cpu))
        elif command == "memory":
            conn.send(window.read())
        elif command == "profile":
            conn.send(_profile(runner, n, device))
        else:
            conn.close()
            return


def _profile(runner: Runner, n: int, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            runner.step()
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=40)


class Sides:
    """Each side of a comparison in its own spawned process, so that its peak memory is its own.

    `factories` maps a side's name to a picklable callable (a module-level class or function, or a
    functools.partial of one) that builds an object with `step()`. Sides are built and warmed up one
    at a time, so that none is timed while another starts; the caller then runs them in turns.
    """

    def __init__(self, factories: dict[str, Callable[[], Runner]], device: str, threads: int | None, warmup: int):
        ctx = mp.get_context("spawn")
        self.conns: dict[str, Any] = {}
        self.procs = []
        for name, factory in factories.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(factory, device, threads, warmup, child), daemon=True)
            proc.start()
            child.close()  # so that a worker that dies shows as EOF here instead of a hang
            self.conns[name] = parent
            self.procs.append(proc)
            try:
                parent.recv()
            except EOFError:
                self.close()
                raise SystemExit(f"the {name} worker failed to start (its error is above)") from None

    def _ask(self, name: str, command: str, n: int = 0) -> Any:
        self.conns[name].send((command, n))
        try:
            return self.conns[name].recv()
        except EOFError:
            self.close()
            raise SystemExit(f"the {name} worker died (its error is above)") from None

    def run(self, name: str, steps: int) -> tuple[float, float]:
        """Wall-clock and CPU seconds (all threads) of `steps` steps of one side."""
        return self._ask(name, "run", steps)

    def memory(self, name: str) -> Memory:
        return self._ask(name, "memory")

    def profile(self, name: str, steps: int) -> str:
        return self._ask(name, "profile", steps)

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.send(("stop", 0))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=30)
