"""What every benchmark script shares: the machine record, timing, peak memory, the results file.

Timing: `time.perf_counter` around one call, with `torch.cuda.synchronize()` on both sides on
CUDA; figures are medians over the timed repeats, warm-up calls are never timed.

Peak memory above the state before a call (the model's weights are already loaded, so this is
the call's own working memory):
- CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus the
  memory allocated before the call (tensors only; the caching allocator may reserve more).
- CPU (Linux): the kernel's exact resident-set high-water mark: writing "5" to
  /proc/self/clear_refs resets VmHWM to the current RSS, VmHWM is read after the call, and the
  RSS before the call is subtracted. Where that is unavailable, the process's lifetime
  `ru_maxrss` is used instead (it only reports a call that raises the all-time peak), and the
  result says so under `memory_method`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from aaclip.errors import AAClipError
from aaclip.io import write_json

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: nothing may download

MIB = 2**20


# ---------------------------------------------------------------------------------- arguments
def parser(description: str) -> argparse.ArgumentParser:
    """Flags every script takes; each adds its own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--json", type=Path, required=True, help="write the results here (atomically)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    return p


def model_arguments(p: argparse.ArgumentParser, batch_sizes: list[int], repeats: int, warmup: int) -> None:
    """The flags every model benchmark shares: which backbone at which size, the settings timed, rounds."""
    p.add_argument("--backbone", default="ViT-L-14-336", help="open_clip model name (default ViT-L-14-336)")
    p.add_argument("--pretrained", default="none",
                   help="weights: none (random, the default: time does not depend on them), a tag, file or folder")
    p.add_argument("--image-size", type=int, default=518)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=batch_sizes)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=repeats, help="timed rounds per setting (median reported)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls of each path per setting")
    p.add_argument("--seed", type=int, default=0)


def setup_device(args, uses_torch: bool = True) -> str:
    """Check the device and apply --threads (importing torch first unless the script never computes)."""
    device = str(args.device)
    if device != "cpu" and not device.startswith("cuda"):
        raise AAClipError(f"--device {device}: choose cpu, cuda or cuda:N")
    if not uses_torch:
        return device
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AAClipError(f"--device {device}: torch sees no CUDA device on this machine; use --device cpu")
    return device


# ---------------------------------------------------------------------------------- machine
def machine(device: str) -> dict:
    """Where and when the figures were measured, including how busy the machine was."""
    from importlib.metadata import version

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "open_clip": version("open_clip_torch"),
        "device": device,
        "device_name": _cpu_model(),
        "load_average_start": load_average(),
    }
    if "torch" in sys.modules:  # only the scripts that compute import torch
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda"):
            info["device_name"] = torch.cuda.get_device_name(device)
            info["cuda"] = torch.version.cuda
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------- measuring
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


class PeakMemory:
    """`with PeakMemory(device) as peak: work()`; then `peak.mib` = the call's peak above the start."""

    def __init__(self, device: str):
        self.device = device
        self.mib: float | None = None

    @staticmethod
    def method(device: str) -> str:
        if device.startswith("cuda"):
            return "torch.cuda.max_memory_allocated minus allocated before the call"
        if _reset_rss_peak():
            return "peak RSS (VmHWM after resetting it via /proc/self/clear_refs) minus RSS before the call"
        return "process ru_maxrss minus RSS before the call (lifetime peak: may under-report)"

    def __enter__(self):
        if self.device.startswith("cuda"):
            import torch

            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _reset_rss_peak()
            self.start = _rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            import torch

            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_peak_bytes()
        self.mib = max(0.0, (peak - self.start) / MIB)
        return False


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_peak_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, device: str) -> tuple[float, float]:
    """Run fn once: (seconds, peak MiB above the start)."""
    with PeakMemory(device) as peak:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, peak.mib


def alternate(items: list, round_index: int) -> list:
    """ABBA order: as given in even rounds, reversed in odd ones (drift in machine load cancels)."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def summary(times: list[float], peaks: list[float], items: int) -> dict:
    """Median time per call and per item, items/s from the median, peak memory (largest over calls)."""
    median = statistics.median(times)
    return {
        "repeats": len(times),
        "seconds": times,
        "median_s": median,
        "ms_per_item": 1000.0 * median / items,
        "items_per_s": items / median,
        "peak_mib": max(peaks),
    }


# ---------------------------------------------------------------------------------- results
def target(name: str, value: float, limit: float) -> dict:
    """A ratio target of the issue: met when value <= limit."""
    return {"name": name, "value": round(value, 4), "limit": limit, "met": bool(value <= limit)}


def write_results(path: Path, benchmark: str, machine_info: dict, started: float, argv, **sections) -> dict:
    """One JSON per script (`python -m benchmarks.<benchmark>` run with `argv`): name, machine (recorded
    at the start), the script's own sections, wall time and the command."""
    results = {"benchmark": benchmark, "machine": {**machine_info, "load_average_end": load_average()}, **sections}
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["command"] = command_line(f"benchmarks.{benchmark}", sys.argv[1:] if argv is None else argv)
    write_json(path, results)
    return results


def command_line(module: str, argv: list[str]) -> str:
    """The command that reproduces these figures (the output path left out)."""
    args, shown = list(argv), []
    while args:
        arg = args.pop(0)
        if arg == "--json":
            args = args[1:]
        elif not arg.startswith("--json="):
            shown.append(arg)
    return " ".join(["python", "-m", module, *map(_quote, shown)])


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " \"$;") else arg


def main_guard(main) -> None:
    """Call main(); an AAClipError prints its message and exits 2 (no traceback)."""
    try:
        main(sys.argv[1:])
    except AAClipError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
