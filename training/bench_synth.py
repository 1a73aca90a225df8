"""Benchmark of the synthetic generator: users per second and peak memory (DESIGN §8: 1M users in ≤ 15 min
with ≤ 4 GB peak memory on 2 cores). `instructue bench synth` calls `run` and prints the figures."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shutil
import tempfile
import threading
from pathlib import Path

import psutil

from training.synth import generate

logger = logging.getLogger(__name__)

TARGET_SECONDS_PER_MILLION = 15 * 60
TARGET_PEAK_RSS_MB = 4096


class _PeakRss:
    """Samples the resident memory of this process and its children in a background thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        proc = psutil.Process()
        rss = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.Error:  # the child ended between listing and reading
                pass
        self.peak = max(self.peak, rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> _PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(
    users: int,
    *,
    out_dir: Path | None = None,
    seed: int = 0,
    report_path: Path,
    noise_rate: float = 0.3,
    chunk_size: int = 20_000,
    progress: bool = False,
) -> dict:
    """Generate `users` users, measure time and peak memory, and write the figures as JSON.

    Args:
        users: users to generate.
        out_dir: a new folder to write the data into (kept; an existing data folder is refused); None writes
            to a temporary folder removed afterwards.
        seed: generator seed.
        report_path: the JSON report to write (e.g. `reports/bench-synth.json`).
        noise_rate, chunk_size, progress: passed to `training.synth.generate`.
    Returns:
        The report: seconds, users_per_s, events, peak_rss_mb, disk_mb, the targets and whether they hold.
    """
    temporary = out_dir is None
    target = Path(tempfile.mkdtemp(prefix="bench-synth-")) / "data" if temporary else Path(out_dir)
    rss_before = psutil.Process().memory_info().rss
    try:
        with _PeakRss() as peak:
            summary = generate(
                target,
                users=users,
                seed=seed,
                noise_rate=noise_rate,
                chunk_size=chunk_size,
                overwrite=False,  # a folder given by the user that holds data is refused, not replaced
                progress=progress,
            )
        disk = _disk_bytes(target)
    finally:
        if temporary:
            shutil.rmtree(target.parent, ignore_errors=True)
    # ru_maxrss (KiB on Linux) also catches spikes between samples, but covers the process's whole life.
    ru_max = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    peak_mb = max(peak.peak / 2**20, ru_max / 1024)
    events = sum(summary.events.values())
    allowed_s = TARGET_SECONDS_PER_MILLION * max(users, 1) / 1_000_000
    report = {
        "users": users,
        "seed": seed,
        "noise_rate": noise_rate,
        "chunk_size": chunk_size,
        "seconds": round(summary.seconds, 2),
        "users_per_s": round(users / summary.seconds, 1),
        "events": events,
        "events_per_s": round(events / summary.seconds, 1),
        "events_per_source": summary.events,
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "disk_mb": round(disk / 2**20, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "targets": {"seconds_max": allowed_s, "peak_rss_mb_max": TARGET_PEAK_RSS_MB},
        "meets_targets": summary.seconds <= allowed_s and peak_mb <= TARGET_PEAK_RSS_MB,
    }
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("bench synth: %s", report)
    return report


def format_table(report: dict) -> str:
    """The report as a plain-text table (for the CLI)."""
    targets = report["targets"]
    rows = [
        ("users", f"{report['users']:,}", ""),
        ("seconds", f"{report['seconds']:.1f}", f"<= {targets['seconds_max']:.0f}"),
        ("users/s", f"{report['users_per_s']:,.0f}", ""),
        ("events", f"{report['events']:,}", ""),
        ("events/s", f"{report['events_per_s']:,.0f}", ""),
        ("peak RSS MB", f"{report['peak_rss_mb']:,.0f}", f"<= {targets['peak_rss_mb_max']:,}"),
        ("disk MB", f"{report['disk_mb']:,.0f}", ""),
    ]
    lines = [f"{'figure':<12}{'value':>16}  target"]
    lines += [f"{name:<12}{value:>16}  {target}" for name, value, target in rows]
    lines.append(f"targets met: {'yes' if report['meets_targets'] else 'no'}")
    return "\n".join(lines)
