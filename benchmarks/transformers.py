"""Transformers, RNNs and keras_hub backbones: params and FLOPs before/after structural pruning; weight-pruning time.

    python benchmarks/transformers.py [--ratio 0.5] [--big-layers 4] [--big-hidden 256]

Builds tiny keras_hub backbones from config (random weights; nothing is
downloaded) and one bigger BERT, then runs the real ``prunectl`` executable on
them and on the shipped ``digits_transformer``/``digits_lstm`` samples:

* ``--neuron-ratio R --dry-run --json`` (and ``--prune-residual`` for the stock
  transformer): params and multiply-adds before/after, and the units removed
  inside layers (heads, feed-forward units), read from the plan;
* ``--sparsity 0.5`` on the bigger BERT with ``--engine file`` and ``--engine
  keras``, timed side by side (wall clock of the whole command, best of 2).

Prints a Markdown table; README.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
PRUNECTL = Path(sys.executable).with_name("prunectl")
TINY = {
    "BERT": ("BertBackbone", dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                                  max_sequence_length=16)),
    "GPT-2": ("GPT2Backbone", dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                                   max_sequence_length=16)),
    "ViT": ("ViTBackbone", dict(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                mlp_dim=32)),
    "Gemma (1 kv head)": ("GemmaBackbone", dict(vocabulary_size=100, num_layers=2, num_query_heads=2,
                                                num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
                                                head_dim=8)),
}  # fmt: skip


def build(folder: Path, big_layers: int, big_hidden: int) -> dict[str, Path]:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    paths = {}
    for name, (cls, kwargs) in TINY.items():
        paths[name] = folder / f"{cls}.keras"
        getattr(keras_hub.models, cls)(**kwargs).save(paths[name])
    big = keras_hub.models.BertBackbone(
        vocabulary_size=30522,
        num_layers=big_layers,
        num_heads=big_hidden // 64,
        hidden_dim=big_hidden,
        intermediate_dim=4 * big_hidden,
        max_sequence_length=128,
    )
    paths[f"BERT {big_layers}x{big_hidden}"] = folder / "bert_big.keras"
    big.save(paths[f"BERT {big_layers}x{big_hidden}"])
    return paths


def plan(path: Path, *flags: str) -> dict:
    out = subprocess.run(
        [PRUNECTL, "prune", path, *flags, "--dry-run", "--json", "-q"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["structural"]


def inside(structural: dict) -> str:
    """Units inside layers, summed per kind (``heads 4 -> 2, ffn 64 -> 32``; ``heads 4 kept`` where refused)."""
    kinds: dict[str, list[int]] = {}
    for row in structural["layers"]:
        for kind, before, after in row.get("inner") or ():
            kinds.setdefault(kind, [0, 0])
            kinds[kind][0] += before
            kinds[kind][1] += after
    return ", ".join(f"{kind} {b} -> {a}" if b != a else f"{kind} {b} kept" for kind, (b, a) in kinds.items())


def timed(*args) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([PRUNECTL, *args], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", default="0.5")
    parser.add_argument("--big-layers", type=int, default=4)
    parser.add_argument("--big-hidden", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {
            "digits_transformer (stock layers)": SAMPLES / "digits_transformer.keras",
            "digits_transformer --prune-residual": SAMPLES / "digits_transformer.keras",
            "digits_lstm": SAMPLES / "digits_lstm.keras",
            **build(folder, args.big_layers, args.big_hidden),
        }
        print(
            f"| model (`--neuron-ratio {args.ratio}`) | params before -> after | FLOPs before -> after "
            "| inside layers |"
        )
        print("| --- | --- | --- | --- |")
        for name, path in paths.items():
            flags = ["--neuron-ratio", args.ratio] + (["--prune-residual"] if "residual" in name else [])
            structural = plan(path, *flags)
            totals = structural["totals"]
            p, f = totals["params"], totals["flops"]
            print(
                f"| {name} | {p['before']:,} -> {p['after']:,} | {f['before']:,} -> {f['after']:,} "
                f"({f['ratio']:.2f}x fewer) | {inside(structural) or '-'} |"
            )
        big = paths[f"BERT {args.big_layers}x{args.big_hidden}"]
        size = big.stat().st_size / 1e6
        file_s = timed("prune", big, "--sparsity", "0.5", "-o", folder / "f.keras", "--engine", "file", "-q", "--force")
        keras_s = timed(
            "prune", big, "--sparsity", "0.5", "-o", folder / "k.keras", "--engine", "keras", "-q", "--force"
        )
        print()
        print(f"`--sparsity 0.5` on BERT {args.big_layers}x{args.big_hidden} ({size:.1f} MB .keras), best of 2:")
        print(f"file engine {file_s:.2f} s, keras engine {keras_s:.2f} s ({keras_s / file_s:.1f}x the file engine)")


if __name__ == "__main__":
    main()
