"""What the benchmarks share: timing, memory and machine-load measurements, the device clock, a quiet Lightning
trainer, a work folder, the real ViVQA-X data's folder, tables and version strings. Nothing heavy at import time (torch
and Lightning load where they are used), so a harness imports this without paying for them."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

#: The repository root: benchmarks run from here (``python -m benchmarks.<name>``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The folder of the real ViVQA-X data (``vivqax/``: the splits): ``$VIVQAX_DIR``, by default ``../shared/data``
#: beside the repository, as for the tests.
VIVQAX_DIR = Path(os.environ.get("VIVQAX_DIR") or REPO_ROOT.parent / "shared" / "data")


# ------------------------------------------------------------------------------------------------ timing and memory
def median_ms(func: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls of ``func``, after one warm-up call (lazy loading, caches)."""
    func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum, quartiles (``q1``, ``q3``: the inclusive method, which stays within the data),
    interquartile range ``iqr`` and median absolute deviation ``mad`` of some timings (at least one)."""
    if not values:
        raise ValueError("spread needs at least one value.")
    median = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (median,) * 3
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "mad": statistics.median(abs(v - median) for v in values),
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_free_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc's ``malloc_trim``; nothing elsewhere), so that an idle
    process holds only what it still uses. Its peak RSS, already reached, is unchanged."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def start_device(device: str, threads: int) -> None:
    """Torch threads of the run and, on a GPU, a fresh peak-memory counter (stops when no GPU is visible)."""
    import torch

    torch.set_num_threads(threads)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is visible to this process.")
        torch.cuda.reset_peak_memory_stats()


def device_clock(device: str) -> float:
    """The wall clock, after the GPU's queued work is done (``perf_counter`` alone would miss it)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gpu_mib(device: str) -> float | None:
    """The run's peak allocated GPU memory in MiB (None on a CPU)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


# ------------------------------------------------------------------------------------------------ a shared machine
# Other work on a shared box slows whichever run is going at that moment, and with it using every core, far more
# than in proportion (OpenMP threads wait on each other). So a run can wait for a quiet machine first, and the share
# of the CPUs that other processes took during it can be measured and printed.


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot, all cores, steal included (``/proc/stat``; 0 when
    unreadable)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU-seconds of a running process, all its threads and its finished children (``/proc/<pid>/stat``; 0 when
    unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return 0.0
    # fields[0] is the state (field 3 of proc(5)): utime, stime, cutime, cstime are fields 14 to 17
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and its finished children."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def others_share(machine_busy: float, own: float, wall: float, cores: int | None = None) -> float:
    """The share of the machine's CPU time that other processes used over ``wall`` seconds, from the machine's busy
    CPU-seconds and ours over the same interval (0 when the machine's counters were unreadable)."""
    cores = cores or os.cpu_count() or 1
    if machine_busy <= 0 or wall <= 0:
        return 0.0
    return min(max(machine_busy - own, 0.0) / (wall * cores), 1.0)


def wait_for_quiet(max_wait: float, threshold: float = 0.15, sample: float = 2.0) -> None:
    """Wait (at most ``max_wait`` seconds) until other processes use less than ``threshold`` of the CPUs; with
    ``max_wait`` 0 or less, return at once."""
    if max_wait <= 0:
        return
    start = time.perf_counter()
    announced = False
    while True:
        busy, own = machine_busy_seconds(), own_cpu_seconds()
        time.sleep(sample)
        share = others_share(machine_busy_seconds() - busy, own_cpu_seconds() - own, sample)
        waited = time.perf_counter() - start
        if share < threshold:
            if announced:
                print(f"  (quiet after {waited:.0f} s)", flush=True)
            return
        if waited >= max_wait:
            print(
                f"  (machine still busy after {waited:.0f} s: others use {share:.0%} of the CPUs; going on)", flush=True
            )
            return
        if not announced:
            print(f"  (waiting for a quiet machine: others use {share:.0%} of the CPUs)", flush=True)
            announced = True


def busy_warning(share: float, tolerated: float = 0.10) -> list[str]:
    """A warning line when other processes took more than ``tolerated`` of the CPUs during some run."""
    if share <= tolerated:
        return []
    return [
        f"warning: other processes used up to {share:.0%} of the CPUs during a run; its steps are slower than the "
        "trainer alone: rerun on a quiet machine before trusting the ratios"
    ]


def load_average() -> str:
    """The 1-minute load average: other work on the machine slows what is timed."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------------ running
def quiet_trainer(**kwargs: Any):
    """A Lightning ``Trainer`` that only trains: no logger, checkpoints, progress bar or model summary (a benchmark
    times the steps, not the bookkeeping); ``kwargs`` add to or override these."""
    import lightning as L

    options = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(options | kwargs))


@contextlib.contextmanager
def work_directory(path: str | None, prefix: str) -> Iterator[Path]:
    """``path`` (created, and kept afterwards) or, when None, a temporary folder removed at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work_dir = Path(path or tmp).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        yield work_dir


def run_logged(
    command: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cores: set[int] | None = None
) -> dict[str, Any]:
    """Run ``command`` from the repository root, its output to ``log_path``, on ``cores`` (its CPU affinity, which
    its children inherit; None: this process's); its ``wall_s``, the share of the CPUs other processes used
    meanwhile (``others_share``) and, when it failed, its ``error``: the exit status and the end of its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    busy, own, start = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        done = subprocess.run(
            list(command),
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
    wall = time.perf_counter() - start
    record: dict[str, Any] = {
        "wall_s": wall,
        "others_share": others_share(machine_busy_seconds() - busy, own_cpu_seconds() - own, wall),
        "log": str(log_path),
    }
    if done.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        record["error"] = f"exit status {done.returncode}; the end of {log_path}:\n" + "\n".join(tail)
    return record


# ------------------------------------------------------------------------------------------------ reporting
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def package_version(name: str) -> str:
    """An installed distribution's version, or ``missing``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def git_head() -> str:
    """The repository's short commit, noting uncommitted changes in ``grpo_lightning/``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "grpo_lightning"], cwd=REPO_ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    changed = " + uncommitted changes in grpo_lightning/" if dirty.stdout.strip() else ""
    return (head.stdout.strip() or "unknown") + changed


# ------------------------------------------------------------------------------------------------ long-lived workers
# A trainer that is timed over several rounds runs in one process for all of them: it loads and warms up once, then
# pauses between optimizer steps until told to run its next block of steps. Commands reach it on its stdin and its
# replies leave on a stream of their own, one JSON object per line; the trainer's own output goes to its log.


class WorkerChannel:
    """The worker's end of the protocol: ``receive`` reads the next command, ``send`` writes one reply."""

    def __init__(self, commands: IO[str], replies: IO[str]):
        self.commands, self.replies = commands, replies

    def send(self, message: dict[str, Any]) -> None:
        self.replies.write(json.dumps(message) + "\n")
        self.replies.flush()

    def receive(self) -> dict[str, Any]:
        line = self.commands.readline()
        if not line:
            raise RuntimeError("The benchmark stopped talking to this worker (its stdin closed).")
        return json.loads(line)


class StepGate:
    """Where a trainer's worker pauses: after the warm-up steps and after every block of measured steps it reports
    the steps done since its last report (``{"event": "paused", "steps": [...]}``) and waits for the next command,
    ``{"command": "run", "steps": n}`` or ``{"command": "finish"}`` (run to the end without pausing again).

    Each step's ``wall_s`` is the time from the previous step's end, or from the command that resumed the trainer
    after a pause, to this step's end: what the trainer does per step, never the time spent waiting.

    Args:
        channel: the worker's ``WorkerChannel``.
        warmup_steps: steps before the first pause (0: pause before the first step).
        clock: the wall clock in seconds (``device_clock``, which waits for a GPU's queued work).
        on_pause: called before each report (e.g. ``release_free_memory``, so that an idle worker holds little).
    """

    def __init__(
        self,
        channel: WorkerChannel,
        warmup_steps: int,
        clock: Callable[[], float] = time.perf_counter,
        on_pause: Callable[[], None] | None = None,
    ):
        self.channel, self.clock, self.on_pause = channel, clock, on_pause
        self.pause_after: int | None = warmup_steps
        self.steps_done = 0
        self.pending: list[dict[str, Any]] = []
        self.last_end = 0.0

    def begin(self) -> None:
        """The trainer is about to take its first step."""
        if self.pause_after == 0:
            self._pause()
        self.last_end = self.clock()

    def step_done(self, record: dict[str, Any]) -> None:
        """A step ended: time it, keep its ``record`` (which gains ``wall_s``), and pause when a block is done."""
        record["wall_s"] = self.clock() - self.last_end
        self.pending.append(record)
        self.steps_done += 1
        if self.steps_done == self.pause_after:
            self._pause()
        self.last_end = self.clock()

    def _pause(self) -> None:
        if self.on_pause is not None:
            self.on_pause()
        self.channel.send({"event": "paused", "steps": self.pending})
        self.pending = []
        command = self.channel.receive()
        if command.get("command") == "run" and int(command.get("steps", 0)) >= 1:
            self.pause_after = self.steps_done + int(command["steps"])
        elif command.get("command") == "finish":
            self.pause_after = None
        else:
            raise RuntimeError(f"Unknown worker command {command!r}: expected run (steps >= 1) or finish.")
