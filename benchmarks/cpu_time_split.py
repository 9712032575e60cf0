"""Where single-stream decode and prefill spend their time on this CPU (Finch L12-D768, bf16 weights).

* decode: ``DecodeModel.step`` as is, and the same step with every matrix product replaced by its
  cached output; the difference is the products' time, reported with the bytes they read per
  second (against a large-buffer read in the same run) and the remainder (the small operations).
  Kinds ``exact`` (bf16 model), ``fp16`` and ``w8a8``.
* prefill of 512 tokens (fp32 model, the exact decoder's packed matrices, as ``generate``): the
  whole prefill; the floating-point rate of one (512 x 768) x (768 x 2688) fp32 product and the
  time all the prefill's block products take at that rate; the chunked WKV of the 12 layers alone.

Medians (decode, 30 steps) and minima (prefill, 4 runs) after a warm-up.

    nice python benchmarks/cpu_time_split.py [--threads 2]

Writes ``benchmarks/results/cpu_time_split.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_malloc_env  # noqa: E402

ensure_malloc_env()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import best_time, median_time, write_json  # noqa: E402
from cpu_inference import PRESETS  # noqa: E402
from decode_speed import bandwidth, our_stepper  # noqa: E402

from eaglefinch import RWKVConfig  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.generation.context import prefill  # noqa: E402
from eaglefinch.model.decode import DecodeModel, Linear  # noqa: E402
from eaglefinch.ops.wkv_chunked import wkv_chunked  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402


def median_step(decoder: DecodeModel) -> float:
    return median_time(our_stepper(decoder), repeat=30, warmup=3)


def decode_split(decoder: DecodeModel, read_GBps: float) -> dict:
    full = median_step(decoder)
    product, cache = Linear.__call__, {}

    def cached(matrix, x):
        if id(matrix) not in cache:
            cache[id(matrix)] = product(matrix, x)
        return cache[id(matrix)]

    Linear.__call__ = cached
    try:
        without = median_step(decoder)
    finally:
        Linear.__call__ = product
    products = full - without
    rate = decoder.weight_bytes() / products / 1e9
    return {"step_ms": full * 1e3, "without_products_ms": without * 1e3, "products_ms": products * 1e3,
            "products_GBps": rate, "products_share_of_read_bandwidth": rate / read_GBps}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    read = bandwidth(args.threads)
    config = RWKVConfig.preset(PRESETS["finch-l12-d768"])
    state_dict = random_state_dict(config, seed=0, dtype=torch.bfloat16)
    bf16 = model_from_state_dict(state_dict, dtype=torch.bfloat16)
    fp32 = model_from_state_dict(state_dict, dtype=torch.float32)
    decoders = {"exact": DecodeModel(bf16), "fp16": DecodeModel(fp32, weights="fp16")}
    decoders["w8a8"] = DecodeModel(fp32, weights="w8a8")
    decode = {name: decode_split(d, read["read_GBps"]) for name, d in decoders.items()}
    for name, row in decode.items():
        print(f"decode {name}: step {row['step_ms']:.1f} ms, products {row['products_ms']:.1f} ms at "
              f"{row['products_GBps']:.1f} GB/s, the rest {row['without_products_ms']:.1f} ms")  # fmt: skip

    T = 512
    tokens = torch.randint(1, config.vocab_size, (T,), generator=torch.Generator().manual_seed(T)).tolist()
    packed = DecodeModel(fp32)
    prefill_s = best_time(lambda: prefill(fp32, tokens, decoder=packed), repeat=4)
    x, w = torch.randn(T, config.n_embd), torch.randn(config.dim_ffn, config.n_embd)
    gflops = 2 * T * w.numel() / best_time(lambda: F.linear(x, w), repeat=10) / 1e9
    block_weights = sum(
        p.numel() for n, p in fp32.named_parameters() if n.startswith("blocks.") and p.dim() == 2
    )
    products_gflop = 2 * T * block_weights / 1e9
    H, N = config.n_embd // config.head_size, config.head_size
    r, k, v = (torch.randn(1, T, H, N) for _ in range(3))
    log_w, u = -torch.rand(1, T, H, N) * 2, torch.randn(H, N)
    with torch.no_grad():
        wkv_s = config.n_layer * best_time(lambda: wkv_chunked(r, k, v, log_w, u), repeat=4)
    prefill_row = {"tokens": T, "seconds": prefill_s, "block_products_GFLOP": products_gflop,
                   "fp32_product_GFLOPS": gflops,
                   "block_products_seconds_at_that_rate": products_gflop / gflops,
                   "chunked_wkv_seconds_all_layers": wkv_s}  # fmt: skip
    print(f"prefill {T}: {prefill_s:.2f} s; block products {products_gflop:.0f} GFLOP = "
          f"{products_gflop / gflops:.2f} s at {gflops:.0f} GFLOPS; chunked WKV {wkv_s:.2f} s")  # fmt: skip
    out = write_json("cpu_time_split", {"threads": args.threads, "bandwidth": read, "decode": decode,
                                        "prefill": prefill_row})  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
