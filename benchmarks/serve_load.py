"""A bounded load test of ``eaglefinch serve`` on loopback, against looping ``generate``.

A random official-format Finch L12-D768 checkpoint (World vocabulary) is served by a real
``eaglefinch serve`` process on 127.0.0.1. For each concurrency N in 1, 4, 16 and 64, N client
threads stream completions through the official ``openai`` client, each starting a new request as
soon as its last one ends, with a distinct prompt every time (so the state cache does not help)
and a length limit drawn from 16..max-tokens (so requests join and leave the batch all the time).
After a warm-up, the server's own count of generated tokens is read at the start and the end of a
window of S seconds: total tokens/s is their difference over S. Every request that starts inside
the window gives a time to first token (request sent to first streamed text). At the end of the
window the clients close their streams, so the test stops by itself.

The baseline is the same work without a server: one request at a time through
``eaglefinch.generate``'s streaming API in this process, for S seconds.

Usage::

    nice python benchmarks/serve_load.py                     # S = 40 s per level
    nice python benchmarks/serve_load.py --seconds 10 --levels 1 4 --name serve_load_try
    nice python benchmarks/serve_load.py --checkpoint-dtype bf16   # as released checkpoints are

Writes ``benchmarks/results/serve_load.json`` and ``serve_load.png`` (``serve_load_bf16.*`` for a
bf16 checkpoint, or ``--name``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, ensure_malloc_env, write_json

ensure_malloc_env()

import httpx  # noqa: E402
import openai  # noqa: E402
import torch  # noqa: E402

import eaglefinch  # noqa: E402
from eaglefinch import RWKVConfig  # noqa: E402
from eaglefinch.checkpoint import model_from_state_dict  # noqa: E402
from eaglefinch.generation.generate import get_decoder, start  # noqa: E402
from eaglefinch.testing import random_state_dict  # noqa: E402

KJV = Path(eaglefinch.__file__).parent / "data" / "kjv.jsonl.gz"


def prompt_source(seed: int):
    """Distinct prompts of 40-200 words, cut from the bundled KJV text at random places."""
    with gzip.open(KJV, "rt") as f:
        words = " ".join(json.loads(line)["text"] for line in f).split()
    rng = random.Random(seed)
    lock = threading.Lock()

    def next_prompt() -> str:
        with lock:
            n = rng.randint(40, 200)
            start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    return next_prompt


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_path: Path, weights: str, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from eaglefinch.cli import main; raise SystemExit(main())",
        "serve",
        "--model",
        str(model_path),
        "--port",
        str(port),
        "--weights",
        weights,
        "--max-batch",
        str(max_batch),
        "--model-name",
        "finch",
    ]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"the server did not start:\n{log.read_text()}")


def run_level(url: str, n: int, seconds: float, warmup: float, max_tokens: int, next_prompt) -> dict:
    """N streaming clients for warmup + seconds; tokens/s from the server's counter over the window."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600, max_retries=0)
    stop = threading.Event()
    window: dict[str, float] = {}
    ttfts: list[float] = []
    errors: list[str] = []
    completed = [0]
    lock = threading.Lock()

    def worker(i: int) -> None:
        seed = 1000 * n + i
        rng = random.Random(seed)
        while not stop.is_set():
            sent = time.perf_counter()
            first = None
            try:
                stream = client.completions.create(
                    model="finch",
                    prompt=next_prompt(),
                    max_tokens=rng.randint(16, max_tokens),
                    temperature=1.0,
                    top_p=0.9,
                    seed=seed,
                    stream=True,
                )
                seed += 1
                with stream:
                    for chunk in stream:
                        if first is None and chunk.choices and chunk.choices[0].text:
                            first = time.perf_counter()
                        if stop.is_set():
                            break  # closing the stream cancels the request on the server
                    else:
                        with lock:
                            completed[0] += 1
            except openai.OpenAIError as error:
                with lock:
                    errors.append(repr(error))
                return
            t0 = window.get("start")
            if first is not None and t0 is not None and sent >= t0 and first <= window.get("end", 1e30):
                with lock:
                    ttfts.append(first - sent)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    before = httpx.get(f"{url}/health", timeout=30).json()
    window["start"] = time.perf_counter()
    time.sleep(seconds)
    after = httpx.get(f"{url}/health", timeout=30).json()
    window["end"] = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=120)
    elapsed = window["end"] - window["start"]
    tokens = after["tokens_generated"] - before["tokens_generated"]
    steps = after["steps"] - before["steps"]
    return {
        "streams": n,
        "window_s": elapsed,
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "decode_steps": steps,
        "mean_batch": tokens / steps if steps else None,
        "max_batch_seen": after.get("max_batch_seen"),
        "requests_completed": completed[0],
        "ttft_samples": len(ttfts),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "errors": errors[:5],
    }


def run_baseline(model_path: Path, weights: str, seconds: float, max_tokens: int, next_prompt) -> dict:
    """One request at a time through ``generate``'s streaming API, in this process."""
    model = eaglefinch.load(model_path)
    tokenizer = eaglefinch.WorldTokenizer()
    decoder = get_decoder(model, weights)
    tokens, ttfts, requests = 0, [], 0
    seed = 0

    rng = random.Random(1)

    def one() -> tuple[int, float | None]:
        nonlocal seed
        sent = time.perf_counter()
        generation = start(
            model,
            tokenizer,
            next_prompt(),
            rng.randint(16, max_tokens),
            decoder=decoder,
            temperature=1.0,
            top_p=0.9,
            seed=seed,
        )
        seed += 1
        first = None
        for _, piece in generation.stream():
            if first is None and piece:
                first = time.perf_counter()
        return len(generation.new_tokens[0]), (first - sent if first is not None else None)

    one()  # warm-up
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n, ttft = one()
        tokens += n
        requests += 1
        if ttft is not None:
            ttfts.append(ttft)
    elapsed = time.perf_counter() - t0
    return {
        "streams": 1,
        "window_s": elapsed,
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "requests_completed": requests,
        "ttft_samples": len(ttfts),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    n = [lv["streams"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(n, [lv["tokens_per_s"] for lv in levels], "o-", label="eaglefinch serve")
    ax1.axhline(result["baseline"]["tokens_per_s"], color="gray", ls="--", label="generate, one at a time")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent streams")
    ax1.set_ylabel("total tokens/s")
    ax1.legend()
    ax1.set_title("throughput")
    ax2.plot(n, [lv["ttft_p50_s"] for lv in levels], "o-", label="p50")
    ax2.plot(n, [lv["ttft_p99_s"] for lv in levels], "s-", label="p99")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("concurrent streams")
    ax2.set_ylabel("time to first token (s)")
    ax2.legend()
    ax2.set_title("latency")
    env = result["environment"]
    fig.suptitle(
        f"{result['settings']['model'].split(',')[0]}, {result['settings']['model'].split(', ')[-1]}, "
        f"weights {result['settings']['weights']}, {env['cpu']}, {env['cores']} cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40, help="measured window per level")
    parser.add_argument("--warmup", type=float, default=8, help="seconds before each window")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--weights", default="exact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the served checkpoint"
    )
    parser.add_argument("--name", help="results file name (default: serve_load, serve_load_bf16)")
    args = parser.parse_args()
    name = args.name or "serve_load" + ("_bf16" if args.checkpoint_dtype == "bf16" else "")

    config = RWKVConfig("6.0", n_layer=12, n_embd=768, vocab_size=65536)
    next_prompt = prompt_source(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "finch-l12-d768.pth"
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.checkpoint_dtype]
        weights = random_state_dict(config, seed=args.seed, dtype=dtype)
        eaglefinch.save(model_from_state_dict(weights, dtype=dtype), model_path)
        baseline = run_baseline(model_path, args.weights, args.seconds, args.max_tokens, next_prompt)
        print(f"generate, one at a time: {baseline['tokens_per_s']:.1f} tok/s", flush=True)
        process, url = start_server(model_path, args.weights, max(args.levels), Path(tmp) / "server.log")
        levels = []
        try:
            for n in args.levels:
                level = run_level(url, n, args.seconds, args.warmup, args.max_tokens, next_prompt)
                levels.append(level)
                nan = float("nan")
                print(
                    f"{n:3d} streams: {level['tokens_per_s']:7.1f} tok/s, "
                    f"mean batch {level['mean_batch'] or 0:.1f}, TTFT p50 {level['ttft_p50_s'] or nan:.2f} s "
                    f"p99 {level['ttft_p99_s'] or nan:.2f} s",
                    flush=True,
                )
                with contextlib.suppress(httpx.HTTPError):  # let cancelled rows drain
                    for _ in range(200):
                        if httpx.get(f"{url}/health", timeout=30).json()["active"] == 0:
                            break
                        time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(30)

    one = next((lv for lv in levels if lv["streams"] == 1), None)
    sixteen = next((lv for lv in levels if lv["streams"] == 16), None)
    summary = {}
    if one and sixteen:
        summary["tokens_per_s_16_over_1"] = sixteen["tokens_per_s"] / one["tokens_per_s"]
        summary["goal_16_over_1"] = 5.0
    if sixteen:
        summary["tokens_per_s_16_over_generate"] = sixteen["tokens_per_s"] / baseline["tokens_per_s"]
    if one:
        summary["tokens_per_s_1_over_generate"] = one["tokens_per_s"] / baseline["tokens_per_s"]
    result = {
        "benchmark": "serve_load",
        "settings": {
            "model": f"random Finch L12-D768, vocabulary 65536, {args.checkpoint_dtype} checkpoint",
            "weights": args.weights,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "max_tokens": args.max_tokens,
            "prompt_words": [40, 200],
            "sampling": {"temperature": 1.0, "top_p": 0.9},
            "clients": "threads in one process with the openai client, on the same machine as the server",
            "torch_threads_server": torch.get_num_threads(),
        },
        "baseline": baseline,
        "levels": levels,
        "summary": summary,
    }
    path = write_json(name, result)
    result = json.loads(path.read_text())
    plot(result, RESULTS / f"{name}.png")
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
