"""What minimum Bayes risk decoding costs: greedy vs eval.mbr_samples on the embedded model (CPU).

    python bench/mbr_cost.py [--n 16] [--samples 8] [--root DIR] [--threads N]

Generates descriptions for N titles of the bundled sample with prodesc.generate three times, with the
`cpu-quality` preset's decoding (min/max new tokens, repetition penalty, batch size): once greedy,
once with --samples candidates per title chosen by ROUGE-L, and once with the greedy output added
to those candidates (eval.mbr_greedy). The base embedded model stands in for a fine-tuned one (the
cost does not depend on the weights). Prints the timings and their ratios, and the time spent
choosing (scoring the candidates against each other) on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import embedded, model_options, sample_titles, timed  # bench/generate.py

from prodesc import metrics
from prodesc.generate import GenSettings, describe
from prodesc.templates import BUILTIN


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    model_options(ap)
    args = ap.parse_args()

    import torch

    cfg, path, model, tokenizer = embedded("cpu-quality", args.root, args.threads)
    titles = sample_titles(args.n)
    # the candidates against each other: bench/mbr_choice.py times the choice against references
    mbr = dataclasses.replace(GenSettings.from_eval(cfg.eval), mbr_samples=args.samples, mbr_references=0)
    greedy = dataclasses.replace(mbr, mbr_samples=0)
    print(
        f"model {path}; {len(titles)} titles; min/max new tokens {mbr.min_new_tokens}/{mbr.max_new_tokens}, "
        f"batch {mbr.batch_size} sequences; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    describe(model, tokenizer, BUILTIN["chat"], titles[:1], greedy, progress=False)  # warm-up
    out_g, t_g = timed(lambda: describe(model, tokenizer, BUILTIN["chat"], titles, greedy, progress=False))
    print(f"greedy: {t_g:.1f} s", flush=True)
    out_m, t_m = timed(
        lambda: describe(model, tokenizer, BUILTIN["chat"], titles, mbr, progress=False, seed=cfg.seed)
    )
    both = dataclasses.replace(mbr, mbr_greedy=True)
    out_b, t_b = timed(
        lambda: describe(model, tokenizer, BUILTIN["chat"], titles, both, progress=False, seed=cfg.seed)
    )
    print(f"MBR: {t_m:.1f} s   MBR + the greedy candidate: {t_b:.1f} s", flush=True)
    candidates = [out_m] * args.samples  # the choice alone: N candidates scored against each other
    _, t_c = timed(lambda: [metrics.mbr_choice([c[i] for c in candidates], mbr.mbr_metric)
                            for i in range(len(titles))])
    print(
        f"greedy: {t_g:.1f} s   MBR ({args.samples} candidates, {mbr.mbr_metric}): {t_m:.1f} s   "
        f"ratio: {t_m / t_g:.2f}x   of which choosing: ~{t_c:.1f} s   "
        f"words per output: {sum(len(o.split()) for o in out_g) / len(titles):.0f} greedy, "
        f"{sum(len(o.split()) for o in out_m) / len(titles):.0f} MBR"
    )
    print(f"MBR + the greedy candidate: {t_b:.1f} s   ratio to MBR: {t_b / t_m:.2f}x   "
          f"to greedy: {t_b / t_g:.2f}x   outputs that are the greedy text: "
          f"{sum(b == g for b, g in zip(out_b, out_g))} of {len(titles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
