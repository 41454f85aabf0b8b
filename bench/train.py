"""python bench/train.py [--budget 150] [--rounds 1] [--root DIR] [--threads N]

Real (non-padding) training tokens per second of prodesc's 02 configuration against the TinyLlama
project's recipe, on the same model (the embedded SmolLM2-135M-Instruct, converted by
models.resolve_model_path) and the same data (the 203 real rows in ../shared/data, or the bundled
sample when that folder is absent), prepared once by the real 01 with the cpu preset.

  ours      the cpu preset as 02 trains it: batches grouped by length and padded to their
            longest row, examples over model.max_length=256 dropped, batch 4 x grad_accum 2
  tinyllama the recipe of the TinyLlama-1.1B product-description project: every example padded
            to max length 512 (longer ones truncated), no grouping or packing (random order),
            batch 2 x grad_accum 8

Both are built by prodesc.train's own functions (training_args, build_trainer, drop_overlong,
models.load_for_training) from config overrides (train.batch_size, train.grad_accum,
model.max_length, ...). Two settings of the recipe have no prodesc config key, because prodesc
never wants them: they are set on the trainer's arguments here, in the benchmark only
(``train_sampling_strategy="random"`` instead of group_by_length, and
``pad_to_multiple_of=512``, which makes TRL's collator pad every batch to 512).

Each variant runs in its own process for --budget seconds of training (then stops mid-run), one
after the other (--rounds N alternates them N times). Timing starts after the first micro-batch
(warm-up) and covers every later micro-batch (forward + backward) and the optimizer steps between
them; each micro-batch's real tokens (attention mask) and positions (padding included) are
counted as the trainer receives it.

FLOPs: for LoRA on a frozen model, each position costs ~2N (forward) + ~2N (backward through
the frozen weights, activation gradients only) + ~6N_lora (the adapters, trained fully), so
FLOPs ~ (4N + 6N_lora) x positions, N = parameters used in matmuls (all of SmolLM2's 134.5M, its
embedding being tied to the LM head), N_lora = adapter parameters; attention's own score/value
products (~4 x seq x d_model x layers per position forward) are left out. "Useful" FLOP/s count
real tokens only. The machine's rate: fp32 torch.matmul of 2048x2048 matrices in a loop, same
thread count, measured in its own process before the variants.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SHARED_SAMPLE = REPO.parent / "shared" / "data" / "amazon_titles_sample.jsonl"
FRACTIONS = ["data.train_size=0.8", "data.validation_size=0.1", "data.test_size=0.1"]
COMMON = ["train.eval_steps=0", "train.save_steps=100000", "train.max_steps=1000", "train.logging_steps=1000",
          "overwrite=true"]
VARIANTS = {
    "ours": ["paths.run=bench-ours"],
    "tinyllama": ["paths.run=bench-tinyllama", "model.max_length=512", "train.batch_size=2", "train.grad_accum=8"],
}
GOAL = 3.0


class BudgetReached(Exception):
    """Raised from inside the training loop once the wall budget is spent."""


def source() -> str:
    return str(SHARED_SAMPLE) if SHARED_SAMPLE.exists() else "bundled"


# --------------------------------------------------------------------------- child: one variant


def run_variant(name: str, root: Path, budget: float) -> dict:
    import torch

    from prodesc import family, models, train
    from prodesc.checkpoints import checkpoint_dirs
    from prodesc.config import load_config
    from prodesc.paths import RunPaths

    cfg = load_config("cpu", [f"data.source={source()}", *FRACTIONS, *COMMON, *VARIANTS[name]])
    paths = RunPaths.from_config(cfg, root)
    fam = family.for_config(cfg)
    backend = models.select_backend(cfg, fam)
    _, data = train.load_prepared(cfg, paths)
    dirs = checkpoint_dirs(cfg, paths)
    args = train.training_args(cfg, paths, dirs, backend, fam)
    model, tokenizer, backend = models.load_for_training(cfg, models.resolve_model_path(cfg, paths), backend, fam)
    if name == "ours":
        data, _ = train.drop_overlong(data, tokenizer, cfg.model.max_length, fam)
    else:  # the TinyLlama recipe: no grouping, every batch padded to max_length (TRL truncates longer rows)
        args.train_sampling_strategy = "random"
        args.pad_to_multiple_of = cfg.model.max_length
    trainer = train.build_trainer(cfg, paths, dirs, args, model, tokenizer, data, fam)

    marks: list[tuple[float, int, int]] = []  # (end time, real tokens, positions) per micro-batch
    step = trainer.training_step

    def timed_step(model_, inputs, *rest, **kw):
        loss = step(model_, inputs, *rest, **kw)
        mask = inputs["attention_mask"]
        marks.append((time.perf_counter(), int(mask.sum()), int(mask.numel())))
        if marks[-1][0] - marks[0][0] > budget and len(marks) >= 3:
            raise BudgetReached
        return loss

    trainer.training_step = timed_step
    start = time.perf_counter()
    try:
        trainer.train()
    except BudgetReached:
        pass
    elapsed = marks[-1][0] - marks[0][0]
    real = sum(m[1] for m in marks[1:])
    positions = sum(m[2] for m in marks[1:])
    n_params = sum(p.numel() for p in model.parameters())
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_per_position = 4 * (n_params - n_lora) + 6 * n_lora
    import resource

    return {
        "variant": name,
        "micro_batches_timed": len(marks) - 1,
        "micro_batch_shape": f"{trainer.args.per_device_train_batch_size} x "
                             f"{'longest in batch' if name == 'ours' else cfg.model.max_length}",
        "seconds": round(elapsed, 2),
        "setup_and_first_micro_batch_s": round(marks[0][0] - start, 2),
        "real_tokens": real,
        "positions": positions,
        "padding_share": round(1 - real / positions, 4),
        "real_tokens_per_s": round(real / elapsed, 2),
        "positions_per_s": round(positions / elapsed, 2),
        "params": n_params,
        "lora_params": n_lora,
        "achieved_gflops": round(flops_per_position * positions / elapsed / 1e9, 2),
        "useful_gflops": round(flops_per_position * real / elapsed / 1e9, 2),
        "train_rows": len(data["train"]),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_matmul(seconds: float = 8.0, n: int = 2048) -> dict:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    elapsed = time.perf_counter() - start
    return {"variant": "matmul", "n": n, "matmuls": count, "seconds": round(elapsed, 2),
            "gflops": round(2 * n**3 * count / elapsed / 1e9, 2), "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- parent


def child(kind: str, root: Path, budget: float, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--root", str(root), "--budget", str(budget)]
    if threads:
        cmd += ["--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    if res.returncode or not lines:
        sys.exit(f"{kind} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def prepare_once(root: Path) -> None:
    from prodesc import models
    from prodesc.config import load_config
    from prodesc.paths import RunPaths
    from prodesc.prepare import prepare

    cfg = load_config("cpu", [f"data.source={source()}", *FRACTIONS])
    paths = RunPaths.from_config(cfg, root)
    manifest = prepare(cfg, paths)
    models.resolve_model_path(cfg, paths)  # convert the embedded model once, outside the timings
    print(f"data: {source()} -> {manifest['splits']} rows (train/validation/test)")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=150.0, help="seconds of timed training per variant and round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--root", default="", help="artifact root to reuse (default: a new temporary folder)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    root = Path(args.root or tempfile.mkdtemp(prefix="prodesc-bench-train-")).resolve()
    if args.child:
        result = run_matmul() if args.child == "matmul" else run_variant(args.child, root, args.budget)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {mem_gib:.1f} GiB RAM; root {root}")
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    if not args.threads and os.getloadavg()[0] >= (os.cpu_count() or 1):
        print("note: the machine is busy; torch's threads then wait on each other (seen here: several times "
              "slower training with 2 threads on 2 busy cores): consider --threads 1", flush=True)
    prepare_once(root)
    matmul = child("matmul", root, args.budget, args.threads)
    print(f"fp32 matmul {matmul['n']}x{matmul['n']}: {matmul['gflops']} GFLOP/s "
          f"({matmul['torch_threads']} threads)", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            res = child(name, root, args.budget, args.threads)
            results[name].append(res)
            print(json.dumps(res), flush=True)
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))

    print(f"\n{'variant':<10} {'batch':>22} {'real tok/s':>10} {'positions/s':>11} {'padding':>8} "
          f"{'GFLOP/s':>8} {'useful':>7} {'of matmul':>9}")
    rate = {}
    for name, runs in results.items():
        rate[name] = statistics.median(r["real_tokens_per_s"] for r in runs)
        r = runs[0]
        achieved = statistics.median(x["achieved_gflops"] for x in runs)
        useful = statistics.median(x["useful_gflops"] for x in runs)
        print(f"{name:<10} {r['micro_batch_shape']:>22} {rate[name]:>10.1f} "
              f"{statistics.median(x['positions_per_s'] for x in runs):>11.1f} {r['padding_share']:>8.1%} "
              f"{achieved:>8.1f} {useful:>7.1f} {achieved / matmul['gflops']:>9.0%}")
    ratio = rate["ours"] / rate["tinyllama"]
    print(f"\nreal tokens/s, ours / TinyLlama recipe: {ratio:.2f}x  (goal >= {GOAL:.0f}x: "
          f"{'met' if ratio >= GOAL else 'MISSED'})")
    print("FLOPs = (4 x (N - N_lora) + 6 x N_lora) x positions; useful = the same x real tokens; "
          f"N = {results['ours'][0]['params']:,}, N_lora = {results['ours'][0]['lora_params']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
