"""python bench/prepare.py [--rows 2248619] [--workdir /tmp/bench_full] [--gz] [--reference] [--boilerplate] [--repeat 1]

Wall time and peak memory of 01_prepare on a full-size trn.json, against one bare parse of the
same file with the fastest JSON reader at hand (``pyarrow.json.read_json``, every column, its
default threads), each in its own process; prints both and the ratio.

The file is written by bench/make_full_trn.py into --workdir (never the repository) and reused
when it is already there. 01 runs as ``python src/01_prepare.py --preset t4`` (the 10k/1k/1k split a
GPU run uses on the full file; 01 does not touch the GPU) with ``overwrite=true``.

Peak RSS: ``ru_maxrss`` of the child from ``os.wait4`` (exact for that process; 01 starts no
subprocesses), and the peak of the summed RSS of the child's process tree sampled every 50 ms
with psutil (a cross-check; it can miss a short spike).

--gz          also run 01 on a gzip-compressed copy (trn.json.gz, made once)
--reference   also run 01 with the line-by-line reader (the path used for files pyarrow cannot
              take; slow, ~35k rows/s)
--boilerplate use a file with edition notes and review copyright lines in the real rows' shares
              (make_full_trn.py --boilerplate; trn_boilerplate.json) and also run 01 keeping them
              (data.drop_edition_note=false data.drop_review_byline=false): what cutting them costs
--repeat N    run each measurement N times, alternating, and report the median

Goals (issue #7): 01 within 2x of the bare parse; 01's peak RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_ROWS = 2_248_619
GOAL_RATIO = 2.0
GOAL_RSS_MB = 1500

BARE_PARSE = """
import sys, time
import pyarrow.json as pj
start = time.perf_counter()
table = pj.read_json(sys.argv[1])
print("ROWS", table.num_rows, "SECONDS", time.perf_counter() - start)
"""

REFERENCE_01 = """
import sys
sys.path.insert(0, {src!r})
from prodesc import prepare
fast_prepare = prepare.prepare
prepare.prepare = lambda cfg, paths: fast_prepare(cfg, paths, fast=False)  # the line-by-line reader
sys.exit(prepare.main(sys.argv[1:]))
"""


class TreePeak(threading.Thread):
    """Peak of the summed RSS of a process and its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self.done.wait(self.interval)


def measure(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd``; return wall seconds, ru_maxrss (MB) and the sampled tree peak (MB)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        sampler = TreePeak(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return {
        "wall": wall,
        "rss": usage.ru_maxrss / 1024,
        "tree": sampler.peak / 2**20,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "?",
    )
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return f"{os.cpu_count()} CPUs ({model}), {mem_kb / 2**20:.1f} GiB RAM, Python {platform.python_version()}"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_full"))
    parser.add_argument("--gz", action="store_true")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--boilerplate", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    if work.is_relative_to(REPO):
        parser.error("--workdir must be outside the repository")
    work.mkdir(parents=True, exist_ok=True)
    name = "trn" + (f"_{args.rows}" if args.rows != FULL_ROWS else "") + "_boilerplate" * args.boilerplate + ".json"
    source = work / name
    if not source.exists():
        print(f"writing {source} ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "bench" / "make_full_trn.py"), str(source), "--rows", str(args.rows),
                        *["--boilerplate"] * args.boilerplate], check=True)
    sources = {"": source}
    if args.gz:
        packed = source.with_name(source.name + ".gz")
        if not packed.exists():
            print(f"writing {packed} ...", flush=True)
            tmp = packed.with_name(packed.name + ".partial")
            with open(source, "rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            tmp.replace(packed)
        sources[".gz"] = packed

    runs: dict[str, list[list[str]]] = {"bare parse (pyarrow.json.read_json)": [[sys.executable, "-c", BARE_PARSE, str(source)]]}
    for suffix, path in sources.items():
        root = Path(tempfile.mkdtemp(prefix="root-", dir=work))
        runs[f"01_prepare{suffix and ' (' + suffix + ')'}"] = [[
            sys.executable, str(REPO / "src" / "01_prepare.py"), "--preset", "t4", "--root", str(root),
            f"data.source={path}", "overwrite=true",
        ]]
        if args.boilerplate:
            runs[f"01_prepare keeping boilerplate{suffix and ' (' + suffix + ')'}"] = [[
                *runs[f"01_prepare{suffix and ' (' + suffix + ')'}"][0], "data.drop_edition_note=false",
                "data.drop_review_byline=false",
            ]]
        if args.reference:
            runs[f"01_prepare line-by-line{suffix and ' (' + suffix + ')'}"] = [[
                sys.executable, "-c", REFERENCE_01.format(src=str(REPO / "src")), "--preset", "t4", "--root",
                str(root), f"data.source={path}", "overwrite=true",
            ]]

    print(f"machine: {machine()}")
    print(f"file: {source} ({source.stat().st_size / 1e6:,.0f} MB, {args.rows:,} rows); {load()} at start")
    results: dict[str, list[dict[str, float]]] = {label: [] for label in runs}
    for i in range(args.repeat):
        for label, (cmd,) in runs.items():
            log = work / f"log-{'-'.join(label.split()[:2])}-{i}.txt"
            results[label].append(measure(cmd, log))
            if "01" in label and "reading line by line" in log.read_text() and "line-by-line" not in label:
                print(f"note: {label} fell back to the line-by-line reader (see {log})")
    print(f"{load()} at end\n")
    print(f"{'run':<42} {'wall s':>7} {'CPU s':>7} {'rows/s':>9} {'peak RSS MB':>12} {'tree peak MB':>13}")
    summary = {}
    for label, res in results.items():
        wall = statistics.median(r["wall"] for r in res)
        cpu = statistics.median(r["cpu"] for r in res)
        rss = max(r["rss"] for r in res)
        tree = max(r["tree"] for r in res)
        summary[label] = (wall, rss)
        print(f"{label:<42} {wall:>7.1f} {cpu:>7.1f} {args.rows / wall:>9,.0f} {rss:>12,.0f} {tree:>13,.0f}")
    bare_wall, _ = summary["bare parse (pyarrow.json.read_json)"]
    wall_01, rss_01 = summary["01_prepare"]
    ratio = wall_01 / bare_wall
    print(f"\n01 / bare parse: {ratio:.2f}x  (goal <= {GOAL_RATIO:.0f}x: {'met' if ratio <= GOAL_RATIO else 'MISSED'})")
    if args.repeat > 1:
        rounds = zip(results["01_prepare"], results["bare parse (pyarrow.json.read_json)"])
        print("  each round (wall, CPU): " + ", ".join(
            f"{a['wall'] / b['wall']:.2f}x / {a['cpu'] / b['cpu']:.2f}x" for a, b in rounds))
    print(f"01 peak RSS: {rss_01:,.0f} MB  (goal <= {GOAL_RSS_MB:,} MB: {'met' if rss_01 <= GOAL_RSS_MB else 'MISSED'})")
    for label, (wall, _) in summary.items():
        if label.startswith("01_prepare") and label != "01_prepare":
            print(f"{label} / bare parse: {wall / bare_wall:.2f}x")
    if args.boilerplate:
        kept = results["01_prepare keeping boilerplate"]
        print(f"01 cutting boilerplate / keeping it: {wall_01 / summary['01_prepare keeping boilerplate'][0]:.2f}x"
              + (" (rounds: " + ", ".join(f"{a['wall'] / b['wall']:.2f}x" for a, b in zip(results["01_prepare"], kept))
                 + ")" if args.repeat > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
