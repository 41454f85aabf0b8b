"""python bench/prepare_rss.py [--rows 50000,100000,200000] [--workdir DIR]

Peak memory of 01_prepare as the input grows: generates trn.json-like files of each size with
bench/make_full_trn.py, runs the real stage on each in a fresh process, and prints rows, file
size, wall time and peak RSS side by side, for the default split (10k/1k/1k counts) and for
fractions (every usable row kept). Flat RSS across sizes = memory that does not grow with the file
(the dedup set and the 8-byte sampling keys are the only per-row state: ~100 bytes a usable row).
With fractions the output dataset itself grows with the file, and the Arrow files that `datasets`
writes are memory-mapped, so their pages show up in RSS (file-backed, reclaimable).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys
sys.path.insert(0, {src!r})
from prodesc import prepare
code = prepare.main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run_prepare(source: Path, root: Path, extra: list[str]) -> tuple[float, float, dict]:
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", CHILD.format(src=str(REPO / "src")), "--preset", "cpu", "--root", str(root),
         f"data.source={source}", *extra],
        capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    if res.returncode:
        sys.exit(f"01_prepare failed on {source}:\n{res.stderr}")
    peak_kb = next(int(l.split()[1]) for l in res.stderr.splitlines() if l.startswith("PEAK_RSS_KB"))
    manifest = json.loads(next(root.glob("data/prepared/*/manifest.json")).read_text())
    return wall, peak_kb / 1024, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(usage=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="50000,100000,200000")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.rows.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prodesc-bench-"))
    modes = {
        "counts 10k/1k/1k": ["data.train_size=10000", "data.validation_size=1000", "data.test_size=1000"],
        "fractions .8/.1/.1": ["data.train_size=0.8", "data.validation_size=0.1", "data.test_size=0.1"],
    }
    print(f"{'mode':<20} {'rows':>9} {'file MB':>8} {'kept':>8} {'wall s':>7} {'rows/s':>8} {'peak RSS MB':>12}")
    for n in sizes:
        source = work / f"trn_{n}.json"
        if not source.exists():
            subprocess.run([sys.executable, str(REPO / "bench" / "make_full_trn.py"), str(source), "--rows", str(n)],
                           check=True, stdout=subprocess.DEVNULL)
        for mode, extra in modes.items():
            root = work / f"root_{n}_{mode.split()[0]}"
            wall, peak, manifest = run_prepare(source, root, extra + ["overwrite=true"])
            print(f"{mode:<20} {n:>9,} {source.stat().st_size / 1e6:>8.1f} {manifest['kept']:>8,} "
                  f"{wall:>7.1f} {n / wall:>8,.0f} {peak:>12.0f}", flush=True)
    print(f"(files and roots in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
