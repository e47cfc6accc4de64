"""Helpers shared by the benchmarks: machine facts, markdown tables, number formatting."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX); without it, bf16
    autocast is emulated and many times slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def machine_line() -> str:
    import torch
    import transformers

    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{cpu_name()}, {os.cpu_count()} logical CPUs ({'/'.join(isa) or 'no AVX info'}), "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, Python {platform.python_version()}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers should already be formatted as strings."""
    from lmlab.runs import markdown_table

    return markdown_table(headers, rows)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float]) -> str:
    """The middle half of the repeats ('q1-q3'; 'min-max' below 4 repeats), to judge noise."""
    if len(xs) < 2:
        return "-"
    if len(xs) < 4:
        return f"{min(xs):,.0f}-{max(xs):,.0f}"
    q1, _, q3 = statistics.quantiles(xs, n=4)
    return f"{q1:,.0f}-{q3:,.0f}"


def verdict(value: float, target: float) -> str:
    return "yes" if value >= target else "**no**"


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds (we sleep, so it is others' work)."""
    import time

    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(max_wait_s: float, threshold: float = 0.15, log=print) -> float:
    """Sleep until other processes use < threshold of the CPUs (or max_wait_s passed).

    The benchmarks use every core; another busy process makes OpenMP threads wait
    for each other and can slow small kernels down several-fold. Returns the
    last busy fraction seen.
    """
    import time

    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy >= threshold and time.monotonic() < deadline:
        log(f"  other processes keep {busy:.0%} of the CPUs busy; waiting for the machine "
            "to be idle")
        time.sleep(5)
        busy = cpu_busy()
    return busy


class OthersCpu:
    """CPU share used by other processes between start() and stop() (0.0-1.0 of all CPUs).

    All CPUs' busy time from /proc/stat minus this process's own CPU time.
    """

    def start(self) -> OthersCpu:
        import time

        try:
            self._stat = _cpu_times()
        except (OSError, ValueError, IndexError):
            self._stat = None
        t = os.times()
        self._own = t.user + t.system
        self._wall = time.perf_counter()
        return self

    def stop(self) -> float:
        import time

        if self._stat is None:
            return float("nan")
        total1, idle1 = _cpu_times()
        total0, idle0 = self._stat
        hz = os.sysconf("SC_CLK_TCK")
        busy_s = ((total1 - total0) - (idle1 - idle0)) / hz
        t = os.times()
        own = t.user + t.system - self._own
        wall = time.perf_counter() - self._wall
        return max(0.0, (busy_s - own) / (wall * (os.cpu_count() or 1)))


def run_standalone(mod, argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_X.py [--quick] [--profile] [--json F]`` for one benchmark
    module (``--profile`` only where the module has ``profile_decode``)."""
    import argparse
    import json
    import sys
    import time
    from pathlib import Path

    ap = argparse.ArgumentParser(description=(mod.__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short smoke version")
    profiled = hasattr(mod, "profile_decode")
    if profiled:
        ap.add_argument("--profile", action="store_true",
                        help="also profile lmlab's decode step")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = mod.run_benchmark(mod.QUICK if args.quick else mod.Settings(),
                            log=lambda m: print(m, file=sys.stderr))
    res["wall_s"] = time.perf_counter() - t0
    print(machine_line())
    print()
    print(mod.format_results(res))
    if profiled and args.profile:
        print()
        print(mod.profile_decode())
    print(f"\nwall time: {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")


def profile_decode_steps(model, prompt, steps: int):
    """Time and profile ``steps`` greedy one-token decode steps after ``prompt`` (B, T).

    Returns (seconds per step without the profiler, the profiler's key averages,
    ms of op self-time per step, seconds of matmul self-time per step).
    """
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from lmlab.generate import decode_one_token, prefill

    T = prompt.size(1)
    with torch.inference_mode():
        model.setup_cache(prompt.size(0), T + 2 * steps + 8)
        tok = prefill(model, prompt).argmax(-1)
        pos = T
        for _ in range(4):  # warm-up
            tok = decode_one_token(model, tok, pos).argmax(-1)
            pos += 1
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = decode_one_token(model, tok, pos).argmax(-1)
            pos += 1
        wall = (time.perf_counter() - t0) / steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                tok = decode_one_token(model, tok, pos).argmax(-1)
                pos += 1
        model.clear_cache()
    avg = prof.key_averages()
    total_ops = sum(e.self_cpu_time_total for e in avg) / steps / 1e3
    matmul_s = sum(e.self_cpu_time_total for e in avg
                   if e.key in ("aten::addmm", "aten::mm")) / steps / 1e6
    return wall, avg, total_ops, matmul_s
