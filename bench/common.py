"""Small helpers shared by the benchmarks: quiet-machine checks, timing, output.

Timing on a shared machine is only meaningful when nothing else runs. The
helpers here read the kernel's CPU accounting (`/proc/stat`) and this
process's own CPU time (`os.times()`), so they can tell how much of the
machine *other* processes (or the hypervisor, via steal time) used while a
measurement ran, and ask the caller to repeat a disturbed one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# -- machine load ---------------------------------------------------------


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs since boot; iowait counts as idle."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]
    # (guest time is already included in user/nice, so it is not added again).
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclasses.dataclass
class LoadProbe:
    """Measures what fraction of the whole machine other processes used in a window."""

    busy: int = 0
    total: int = 0
    own: float = 0.0

    def start(self) -> "LoadProbe":
        self.busy, self.total = _cpu_ticks()
        self.own = _own_cpu_seconds()
        return self

    def foreign_fraction(self) -> float:
        """CPU used by others since `start`, as a fraction of all cores (0..1)."""
        busy, total = _cpu_ticks()
        own_ticks = (_own_cpu_seconds() - self.own) * _CLOCK_TICK
        span = total - self.total
        if span <= 0:
            return 0.0
        return max(0.0, (busy - self.busy - own_ticks) / span)


def machine_busy_fraction(window_s: float = 0.5) -> float:
    """Fraction of the machine's CPU used by other processes over `window_s`."""
    probe = LoadProbe().start()
    time.sleep(window_s)
    return probe.foreign_fraction()


def wait_until_idle(
    threshold: float = 0.1, window_s: float = 0.5, timeout_s: float = 300.0, log=print
) -> float:
    """Blocks until other processes use < `threshold` of the CPU; returns the last reading.

    Gives up (and returns the high reading) after `timeout_s`, so a permanently
    busy machine slows a benchmark down instead of hanging it.
    """
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        busy = machine_busy_fraction(window_s)
        if busy < threshold or time.monotonic() > deadline:
            return busy
        if not announced:
            log(f"  machine busy ({busy:.0%} used by other processes); waiting...")
            announced = True
        time.sleep(1.0)


# -- timing ---------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of the timed repeats, plus how clean the run was."""

    seconds: list[float]
    foreign_load: float  # fraction of the machine others used during the repeats
    attempts: int  # 1 + the number of disturbed runs that were thrown away

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median: a rough noise indicator."""
        return (max(self.seconds) - min(self.seconds)) / self.median


def time_calls(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Calls `fn` `warmup` times untimed, then returns the wall time of each of `repeats` calls.

    `fn` must only return once its work is done (e.g. it fetches a result).
    """
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def quiet_timing(
    fn: Callable[[], object],
    repeats: int,
    warmup: int,
    max_foreign_load: float = 0.1,
    max_attempts: int = 4,
    min_probe_s: float = 0.25,
    log=print,
    idle_timeout_s: float = 300.0,
) -> Timing:
    """`time_calls` on an idle machine, redone while other processes disturb it.

    Before each attempt waits until the machine is idle; after it, checks how
    much CPU other processes took during the repeats and retries if more than
    `max_foreign_load`. The kernel counts CPU time in ticks (usually 10 ms), so
    a load probe shorter than `min_probe_s` is extended by idling until it is
    that long. After `max_attempts` keeps the least disturbed attempt. Each
    wait for an idle machine gives up after `idle_timeout_s`.
    """
    best = None
    for attempt in range(1, max_attempts + 1):
        wait_until_idle(max_foreign_load, timeout_s=idle_timeout_s, log=log)
        for _ in range(warmup):
            fn()
        probe = LoadProbe().start()
        seconds = time_calls(fn, repeats, warmup=0)
        time.sleep(max(0.0, min_probe_s - sum(seconds)))
        load = probe.foreign_fraction()
        timing = Timing(seconds, load, attempt)
        if best is None or load < best.foreign_load:
            best = timing
        if load <= max_foreign_load:
            return timing
        log(f"  disturbed ({load:.0%} of the CPU used by others); measuring again")
    best.attempts = max_attempts
    return best


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- machine description ----------------------------------------------------


def machine_info() -> dict:
    """What the numbers were measured on."""
    info = {
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg_at_start": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
        info["inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- output -----------------------------------------------------------------


def write_json(path: str, payload) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured markdown table; numbers are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [
        all(_looks_numeric(row[j]) for row in cells) if cells else False
        for j in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A fixed-width table for the terminal."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[j]) for row in cells]) for j, h in enumerate(headers)]
    fmt = lambda row: "  ".join(  # noqa: E731
        c.rjust(w) if _looks_numeric(c) else c.ljust(w) for c, w in zip(row, widths)
    )
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def _looks_numeric(text: str) -> bool:
    try:
        float(text.rstrip("x%*").replace(",", ""))
        return True
    except ValueError:
        return text in ("-", "")
