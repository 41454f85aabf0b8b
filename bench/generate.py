"""Batched vs one-at-a-time generation on the embedded model (SmolLM2-135M-Instruct, CPU).

    python bench/generate.py [--n 32] [--batch-size 16] [--max-new-tokens 48] [--root DIR] [--threads N]

Generates descriptions for N titles of the bundled sample with prodesc.generate twice, with the
same greedy settings: in batches (left padding, length-sorted) and one prompt at a time. Prints
both timings and the speed ratio, and fails (exit 1) when any output differs. The embedded model
is converted into --root (default: a temporary folder; pass a folder to reuse the conversion).

Run it on an otherwise idle machine, or pass --threads 1 when another process is busy: with two
torch threads on two cores next to another busy process, generation ran ~25x slower (threads
waiting on each other), which swamps any batching effect.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prodesc import models
from prodesc.config import Config, load_config
from prodesc.generate import GenSettings, describe
from prodesc.paths import RunPaths
from prodesc.prepare import BUNDLED_SAMPLE
from prodesc.templates import BUILTIN


def sample_titles(n: int) -> list[str]:
    titles: list[str] = []
    with open(BUNDLED_SAMPLE, encoding="utf-8") as fh:
        for line in fh:
            title = " ".join(str(json.loads(line).get("title") or "").split())
            if title and title not in titles:
                titles.append(title)
            if len(titles) == n:
                break
    return titles


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def model_options(ap: argparse.ArgumentParser) -> None:
    """--root and --threads, the arguments of :func:`embedded`."""
    ap.add_argument("--root", default="")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")


def embedded(preset: str, root: str, threads: int) -> tuple[Config, str, Any, Any]:
    """(config, model path, model, tokenizer): the embedded model converted into ``root`` (default:
    a temporary folder), with ``threads`` torch threads (0: torch's choice)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    folder = Path(root or tempfile.mkdtemp(prefix="prodesc-bench-")).resolve()
    cfg = load_config(preset, [f"paths.root={folder}"])
    path = models.resolve_model_path(cfg, RunPaths.from_config(cfg, folder))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return cfg, path, model, AutoTokenizer.from_pretrained(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    model_options(ap)
    args = ap.parse_args()

    import torch

    _, path, model, tokenizer = embedded("cpu", args.root, args.threads)
    template = BUILTIN["chat"]
    titles = sample_titles(args.n)
    batched = GenSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    single = GenSettings(max_new_tokens=args.max_new_tokens, batch_size=1)
    print(
        f"model {path}; {len(titles)} titles; greedy, max_new_tokens={args.max_new_tokens}; "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )

    describe(model, tokenizer, template, titles[:2], single, progress=False)  # warm-up
    out_b, t_b = timed(lambda: describe(model, tokenizer, template, titles, batched, progress=False))
    print(f"batched: {t_b:.1f} s", flush=True)
    out_s, t_s = timed(lambda: describe(model, tokenizer, template, titles, single, progress=False))

    print(
        f"batched (batch {args.batch_size}): {t_b:.1f} s   one at a time: {t_s:.1f} s   "
        f"speed-up: {t_s / t_b:.2f}x"
    )
    diffs = [i for i, (a, b) in enumerate(zip(out_b, out_s)) if a != b]
    for i in diffs:
        print(f"MISMATCH row {i}: {titles[i]!r}\n  batched: {out_b[i]!r}\n  single:  {out_s[i]!r}")
    print(f"identical outputs: {len(titles) - len(diffs)}/{len(titles)}")
    print(f"example: {titles[0]!r} -> {out_b[0]!r}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
