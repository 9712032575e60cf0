"""bf16 products where the CPU has no bf16 instructions: oneDNN's emulation against fp32 on upcast weights.

On CPUs without AVX512-BF16 or AMX (AVX2 or plain AVX-512), oneDNN still multiplies bf16 matrices,
emulating bf16 arithmetic. For the matrices of Finch L12-D768 (768 x 768, 2688 x 768, 768 x 2688 and
the 65536 x 768 head) and R rows (1 ... 512: decode batches and prompts), this times

* ``onednn``: the decoder's packed bf16 matrix (``Linear(w, "onednn")``, product forced);
* ``upcast``: ``F.linear(x.float(), w.float()).bfloat16()``, the upcast paid on every call;
* ``fp32 copy``: the same product on a kept fp32 copy (twice the memory; the upcast's lower bound);
* ``packed fp32 copy``: a kept fp32 copy in oneDNN's layout, as ``DecodeModel(fp32_copies=True)``
  keeps it (``Linear(w, "onednn", fp32_copy=True)``; the server's choice where memory allows);

and reports each as a ratio to ``onednn``, with the row counts from which ``upcast`` and the packed
copy win. The first is where ``eaglefinch.model.decode.upcast_rows`` switches; the decoder's copies
serve products from 2 rows. Best of 5 after a warm-up.

    nice python benchmarks/bf16_emulation.py [--threads 2]

Writes ``benchmarks/results/bf16_emulation.json``.
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
from common import best_time, write_json  # noqa: E402

from eaglefinch.model import decode  # noqa: E402

SHAPES = [(768, 768), (2688, 768), (768, 2688), (65536, 768)]
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 512]


def contenders(x, weight, packed, copy, packed_copy) -> dict:
    """Best seconds of each product of ``x`` by ``weight``."""
    return {
        "onednn": best_time(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")),
        "upcast": best_time(lambda: F.linear(x.float(), weight.float()).bfloat16()),
        "fp32 copy": best_time(lambda: F.linear(x.float(), copy).bfloat16()),
        "packed fp32 copy": best_time(
            lambda: torch.ops.mkldnn._linear_pointwise(
                x.float(), packed_copy, None, "none", [], ""
            ).bfloat16()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not decode.onednn_bf16_available():
        sys.exit("oneDNN has no bf16 products on this CPU (it needs AVX-512): nothing to compare")
    results = []
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features).bfloat16()
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        copy = weight.float()
        packed_copy = decode.Linear(weight, "onednn", fp32_copy=True).wide
        if packed_copy is None:  # native bf16 instructions: the decoder keeps no copy
            packed_copy = torch.ops.mkldnn._reorder_linear_weight(copy, None)
        first_win = copy_win = None
        for rows in ROWS:
            x = torch.randn(rows, in_features).bfloat16()
            times = contenders(x, weight, packed, copy, packed_copy)
            ratios = {k: times["onednn"] / t for k, t in times.items() if k != "onednn"}
            if first_win is None and ratios["upcast"] > 1:
                first_win = rows
            if copy_win is None and ratios["packed fp32 copy"] > 1:
                copy_win = rows
            results.append({"shape": [out_features, in_features], "rows": rows, "seconds": times,
                            "speedup_over_onednn": ratios})  # fmt: skip
            shown = "  ".join(f"{k} x{r:.2f}" for k, r in ratios.items())
            print(
                f"{out_features}x{in_features} rows={rows:4d} onednn {times['onednn'] * 1e6:8.0f} us  {shown}"
            )
        results.append({"shape": [out_features, in_features], "upcast_wins_from_rows": first_win,
                        "packed_fp32_copy_wins_from_rows": copy_win,
                        "upcast_rows_used": decode.upcast_rows(out_features * in_features)})  # fmt: skip
    out = write_json(
        "bf16_emulation",
        {"native_bf16": decode.native_bf16_available(), "threads": args.threads, "results": results},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
