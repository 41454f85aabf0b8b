"""python bench/gpu_memory.py

GPU memory ESTIMATES (not measurements: there is no GPU here) for training with each GPU preset
(configs/t4.yaml, l4.yaml, a100.yaml), from the model's shape and the preset's settings. Reads
the presets through prodesc.config, so a changed batch size or max_length shows up here.

  weights      4-bit NF4 with double quantization: 0.5 byte/param + quantization constants (one
               8-bit absmax per 64 weights, one fp32 constant per 256 of those: ~0.016 byte/param)
               for every linear layer of the decoder; embeddings and the LM head stay 16-bit.
               16-bit: 2 bytes/param.
  LoRA         r x (in + out) per adapted matrix (q, k, v, o, gate, up, down in every layer), in
               fp32: weight 4 + gradient 4 + Adam moments 8 = 16 bytes/param.
  activations  gradient checkpointing keeps each layer's input: L x B x T x d x 2 bytes; the
               backward recomputes one layer at a time: B x T x (6d + 2d_kv + 4f) x 2 bytes
               (flash/SDPA attention: no T x T scores kept); logits at their peak, in the loss's
               backward: B x T x V x (2 bytes for the 16-bit logits + 4 for the fp32 copy the loss
               takes + 4 for its gradient), unless Unsloth's fused loss computes them in chunks.
  overhead     CUDA context and allocator slack: ~1 GB, a rule of thumb.

T is the preset's model.max_length (the worst case: prodesc pads a batch to its longest row).

03 and 04 (generation; the second table) load the base model in 16 bits, never 4-bit:
  weights      2 bytes/param; the adapter in fp32 (PEFT upcasts it when loading): 4 bytes/param.
  KV cache     2 (K, V) x L x d_kv x 2 bytes per token, for B rows of T prompt + eval.max_new_tokens
               tokens (03: B = eval.batch_size; 04: B = 1; the merge check: 3 rows, 48 new tokens).
  prefill      one layer's forward over the prompt, as above (an upper bound); generation keeps
               only the last position's logits.
  04 before    the merged and the base model loaded at once: the 16-bit weights twice.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

GB = 1e9
NF4_BYTES = 0.5 + (1 + 4 / 256) / 64  # 4-bit weight + double-quantized absmax per 64-weight block
OVERHEAD_GB = 1.0
GPU_GB = {"t4": 15.0, "l4": 22.5, "a100": 40.0}  # usable memory as Colab reports it


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture decoder (values from the model's config.json)."""

    layers: int
    d: int
    d_kv: int  # num_key_value_heads x head_dim
    ffn: int
    vocab: int
    tied: bool

    def linear_params(self) -> int:
        per_layer = 2 * self.d * self.d + 2 * self.d * self.d_kv + 3 * self.d * self.ffn
        return self.layers * per_layer

    def embedding_params(self) -> int:
        return self.vocab * self.d * (1 if self.tied else 2)

    def lora_params(self, r: int) -> int:
        per_layer = r * (2 * (self.d + self.d) + 2 * (self.d + self.d_kv) + 3 * (self.d + self.ffn))
        return self.layers * per_layer


SHAPES = {
    # unsloth/Llama-3.2-1B-Instruct: hidden 2048, 16 layers, 8 KV heads x 64, MLP 8192, tied
    "unsloth/Llama-3.2-1B-Instruct": Shape(layers=16, d=2048, d_kv=512, ffn=8192, vocab=128256, tied=True),
    # unsloth/Meta-Llama-3.1-8B-Instruct: hidden 4096, 32 layers, 8 KV heads x 128, MLP 14336
    "unsloth/Meta-Llama-3.1-8B-Instruct": Shape(layers=32, d=4096, d_kv=1024, ffn=14336, vocab=128256, tied=False),
}


def estimate(preset: str) -> dict[str, float]:
    from prodesc.config import load_config

    cfg = load_config(preset)
    shape = SHAPES[cfg.model.name]
    b, t = cfg.train.batch_size, cfg.model.max_length
    linear, embed = shape.linear_params(), shape.embedding_params()
    weights = (linear * NF4_BYTES + embed * 2) if cfg.model.load_in_4bit else (linear + embed) * 2
    lora = shape.lora_params(cfg.lora.r) * 16
    kept = shape.layers * b * t * shape.d * 2 if cfg.train.gradient_checkpointing else float("nan")
    one_layer = b * t * (6 * shape.d + 2 * shape.d_kv + 4 * shape.ffn) * 2
    logits = b * t * shape.vocab * (2 + 4 + 4)
    return {
        "params_b": (linear + embed) / 1e9,
        "weights": weights / GB,
        "lora_m": shape.lora_params(cfg.lora.r) / 1e6,
        "lora": lora / GB,
        "kept": kept / GB,
        "one_layer": one_layer / GB,
        "logits": logits / GB,
        "batch": b,
        "seq": t,
        "bits": 4 if cfg.model.load_in_4bit else 16,
        "model": cfg.model.name,
    }


def main() -> int:
    print("ESTIMATES, not measurements (GB = 1e9 bytes)\n")
    header = (f"{'preset':<6} {'model':<36} {'bits':>4} {'B x T':>8} {'weights':>8} {'LoRA':>6} {'ckpt':>6} "
              f"{'layer':>6} {'logits':>7} {'total':>6} {'w/o logits':>10} {'GPU':>5}")
    print(header)
    for preset, gpu in GPU_GB.items():
        e = estimate(preset)
        rest = e["weights"] + e["lora"] + e["kept"] + e["one_layer"] + OVERHEAD_GB
        total = rest + e["logits"]
        print(f"{preset:<6} {e['model']:<36} {e['bits']:>4} {e['batch']:>3} x {e['seq']:<3} {e['weights']:>8.2f} "
              f"{e['lora']:>6.2f} {e['kept']:>6.2f} {e['one_layer']:>6.2f} {e['logits']:>7.2f} {total:>6.1f} "
              f"{rest:>10.1f} {gpu:>5.1f}")
    print(f"\n(total = weights + LoRA + checkpointed inputs + one recomputed layer + logits + {OVERHEAD_GB:.0f} GB "
          "overhead; 'w/o logits' assumes Unsloth's chunked loss)")
    for preset in GPU_GB:
        e = estimate(preset)
        print(f"{preset}: {e['params_b']:.2f}B params, LoRA r=16 all-linear {e['lora_m']:.1f}M params")
    print(f"\n03 / 04, 16-bit weights (ESTIMATES, GB): merge = the merge and its check; eval = 03's generation "
          f"at eval.batch_size; 04 = one copy of the weights; 04 before = the merged and the base model at once")
    print(f"{'preset':<6} {'weights':>8} {'adapter':>8} {'KV eval':>8} {'merge':>6} {'eval':>6} {'04':>6} "
          f"{'04 before':>9} {'GPU':>5}")
    for preset, gpu in GPU_GB.items():
        g = generation(preset)
        print(f"{preset:<6} {g['weights']:>8.2f} {g['adapter']:>8.2f} {g['kv_eval']:>8.2f} {g['merge']:>6.1f} "
              f"{g['eval']:>6.1f} {g['demo']:>6.1f} {g['demo_before']:>9.1f} {gpu:>5.1f}")
    return 0


def generation(preset: str) -> dict[str, float]:
    """GPU memory of 03 and 04 for ``preset`` (see the module docstring), in GB."""
    from prodesc.config import load_config

    cfg = load_config(preset)
    shape = SHAPES[cfg.model.name]
    t = cfg.model.max_length
    weights = (shape.linear_params() + shape.embedding_params()) * 2
    adapter = shape.lora_params(cfg.lora.r) * 4

    def kv(rows: int, new_tokens: int) -> float:
        return 2 * shape.layers * shape.d_kv * 2 * rows * (t + new_tokens)

    def prefill(rows: int) -> float:
        return rows * t * (6 * shape.d + 2 * shape.d_kv + 4 * shape.ffn) * 2

    b, new = cfg.eval.batch_size, cfg.eval.max_new_tokens
    fixed = weights + adapter + OVERHEAD_GB * GB
    return {
        "weights": weights / GB,
        "adapter": adapter / GB,
        "kv_eval": kv(b, new) / GB,
        "merge": (fixed + kv(3, 48) + prefill(3)) / GB,
        "eval": (fixed + kv(b, new) + prefill(b)) / GB,
        "demo": (fixed + kv(1, new) + prefill(1)) / GB,
        "demo_before": (fixed + weights + kv(1, new) + prefill(1)) / GB,
    }


if __name__ == "__main__":
    sys.exit(main())
