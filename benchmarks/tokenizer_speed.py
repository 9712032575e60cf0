"""Tokenizer speed: eaglefinch's WorldTokenizer against the reference and the Rust tokenizer.

All tokenizers run in one process on the same mixed text (English, Python code, and the Universal
Declaration of Human Rights in every language of the corpus), runs interleaved round by round,
best of ``--repeats``.
Encoding is timed two ways for eaglefinch: *cold* (its chunk cache cleared before every run, so
nothing carries over between runs) and *warm* (a second pass over the same text). Every
tokenizer's ids are checked against the reference's.

    python benchmarks/tokenizer_speed.py            # writes benchmarks/results/tokenizer_speed.json

Peers: ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` (pure Python, the reference; ``pip install rwkv``)
and ``pyrwkv_tokenizer`` (Rust; ``pip install pyrwkv-tokenizer``). A peer that is not installed
is recorded as missing.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "src" / "eaglefinch" / "tokenizer" / "rwkv_vocab_v20230424.txt"
DEFAULT_CORPORA = Path("/work/shared/data/corpora")
SLICES = ROOT / "tests" / "tokenizer" / "data"


def build_text(corpora: Path, part_bytes: int) -> tuple[str, dict]:
    """About ``part_bytes`` each of English, code and languages, joined by blank lines."""
    english, languages = [], []
    if (corpora / "kjv_books.jsonl").exists() and (corpora / "udhr.jsonl").exists():
        source = str(corpora)
        english = [json.loads(line)["text"] for line in open(corpora / "kjv_books.jsonl", encoding="utf-8")]
        udhr = [json.loads(line) for line in open(corpora / "udhr.jsonl", encoding="utf-8")]
    else:
        # A checkout without the corpora: the slices kept with the tests, far below the sizes
        # asked for (the code part still comes from the standard library).
        source = f"{SLICES} (test slices only: {corpora} not found)"
        english = [json.loads(line)["text"] for line in open(SLICES / "kjv_sample.jsonl", encoding="utf-8")]
        udhr = [json.loads(line) for line in open(SLICES / "udhr_sample.jsonl", encoding="utf-8")]
    # Every language in turn, a slice of each per round, until the budget is met.
    per_language = max(500, part_bytes // max(1, len(udhr)) // 2)
    taken = 0
    offset = 0
    while taken < part_bytes and offset < max(len(d["text"]) for d in udhr):
        for doc in udhr:
            piece = doc["text"][offset : offset + per_language]
            if piece:
                languages.append(piece)
                taken += len(piece.encode("utf-8"))
        offset += per_language
    english_text = _take("\n\n".join(english), part_bytes)
    code_files = sorted(
        glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)
    )
    code, size = [], 0
    for name in code_files:
        if size >= part_bytes:
            break
        text = Path(name).read_text(encoding="utf-8", errors="replace")
        code.append(text)
        size += len(text.encode("utf-8"))
    languages_text = _take("\n\n".join(languages), part_bytes)
    code_text = _take("\n\n".join(code), part_bytes)
    text = "\n\n".join([english_text, code_text, languages_text])
    return text, {
        "source": source,
        "bytes": len(text.encode("utf-8")),
        "english_bytes": len(english_text.encode("utf-8")),
        "code_bytes": len(code_text.encode("utf-8")),
        "languages_bytes": len(languages_text.encode("utf-8")),
        "languages": len({d.get("code", d.get("lang")) for d in udhr}),
        "code_from": "Python standard library (" + sysconfig.get_paths()["stdlib"] + ")",
    }


def _take(text: str, n_bytes: int) -> str:
    return text.encode("utf-8")[:n_bytes].decode("utf-8", "ignore")


def best(fn, repeats: int, before=None) -> tuple[float, float, object]:
    """Best wall and CPU seconds over the repeats, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        if before is not None:
            before()
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def load_time_fresh(code: str, env: dict | None = None) -> tuple[float, float] | str:
    """Wall and CPU seconds that ``code`` prints (as "WALL CPU") when run in a fresh interpreter,
    or what went wrong."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            env={**os.environ, **(env or {})},
        )
        wall, cpu = out.stdout.strip().splitlines()[-1].split()
        return float(wall), float(cpu)
    except subprocess.CalledProcessError as error:
        return f"failed: {error.stderr.strip().splitlines()[-1:]}"
    except (subprocess.SubprocessError, ValueError, IndexError) as error:
        return f"failed: {error}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count()}
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "rwkv", "pyrwkv_tokenizer"):
        try:
            from importlib.metadata import version

            out[name] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001 - a missing package is recorded, not fatal
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument(
        "--part-bytes", type=int, default=1_400_000, help="bytes of each of the three kinds of text"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=2, help="the reference is slow")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer_speed.json")
    args = parser.parse_args(argv)
    info = machine()  # before the runs: the load average then

    from eaglefinch.tokenizer import WorldTokenizer

    text, text_info = build_text(args.corpora, args.part_bytes)
    data = text.encode("utf-8")
    n_bytes = len(data)
    results: dict = {}

    name = "eaglefinch WorldTokenizer"
    reference_name = "reference (rwkv TRIE_TOKENIZER, pure Python)"
    rust_name = "pyrwkv-tokenizer (Rust)"
    t = time.perf_counter()
    ours = WorldTokenizer()
    results[name] = {"load_s_first_in_process": time.perf_counter() - t}
    peers: dict = {}
    try:
        from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

        t = time.perf_counter()
        peers[reference_name] = TRIE_TOKENIZER(str(VOCAB))
        results[reference_name] = {"load_s_in_process": time.perf_counter() - t}
    except ImportError:
        results[reference_name] = {"missing": "pip install rwkv"}
    try:
        import pyrwkv_tokenizer

        t = time.perf_counter()
        peers[rust_name] = pyrwkv_tokenizer.RWKVTokenizer()
        results[rust_name] = {"load_s_in_process": time.perf_counter() - t}
    except ImportError:
        results[rust_name] = {"missing": "pip install pyrwkv-tokenizer"}

    # Timed runs: (label, function, runs wanted, set-up before each run), interleaved round by
    # round so that a busy spell on a shared machine hits every tokenizer alike.
    outputs: dict[str, object] = {"ours encode cold": ours.encode(text)}
    jobs = [
        ("ours encode cold", lambda: ours.encode(text), args.repeats, ours.clear_cache),
        ("ours encode warm", lambda: ours.encode(text), args.repeats, None),
        ("ours decode", lambda: ours.decode(outputs["ours encode cold"]), args.repeats, None),
    ]
    for peer_name, peer in peers.items():
        runs = args.reference_repeats if peer_name == reference_name else args.repeats
        outputs[f"{peer_name} encode"] = peer.encode(text)
        jobs.append((f"{peer_name} encode", lambda p=peer: p.encode(text), runs, None))
        jobs.append(
            (f"{peer_name} decode", lambda p=peer, k=peer_name: p.decode(outputs[f"{k} encode"]), runs, None)
        )
    timing: dict[str, tuple[float, float]] = {}
    for round_ in range(max(job[2] for job in jobs)):
        for label, fn, runs, before in jobs:
            if round_ >= runs:
                continue
            wall, cpu, result = best(fn, 1, before)
            outputs[label] = result
            old = timing.get(label, (float("inf"), float("inf")))
            timing[label] = (min(old[0], wall), min(old[1], cpu))

    def mbps(label: str, cpu: bool = False) -> float:
        return n_bytes / timing[label][1 if cpu else 0] / 1e6

    expected = outputs.get(f"{reference_name} encode")
    ours_ids = outputs["ours encode cold"]
    results[name] |= {
        "encode_MBps_cold": mbps("ours encode cold"),
        "encode_MBps_warm": mbps("ours encode warm"),
        "encode_MBps_cold_cpu": mbps("ours encode cold", cpu=True),
        "encode_MBps_warm_cpu": mbps("ours encode warm", cpu=True),
        "decode_MBps": mbps("ours decode"),
        "decode_MBps_cpu": mbps("ours decode", cpu=True),
        "tokens": len(ours_ids),
        "round_trip_exact": outputs["ours decode"] == text,
        "ids_equal_reference": None if expected is None else ours_ids == expected,
    }
    for peer_name in peers:
        peer_ids = outputs[f"{peer_name} encode"]
        results[peer_name] |= {
            "encode_MBps": mbps(f"{peer_name} encode"),
            "encode_MBps_cpu": mbps(f"{peer_name} encode", cpu=True),
            "decode_MBps": mbps(f"{peer_name} decode"),
            "decode_MBps_cpu": mbps(f"{peer_name} decode", cpu=True),
            "tokens": len(peer_ids),
            "round_trip_exact": outputs[f"{peer_name} decode"] == text,
            "ids_equal_reference": None if expected is None else peer_ids == expected,
        }

    # Loading, in a fresh interpreter (imports excluded), best of three.
    timer = "t, c = time.perf_counter(), time.process_time(); {call}; "
    timer += "print(time.perf_counter() - t, time.process_time() - c)"
    fresh = "import time; from eaglefinch.tokenizer import WorldTokenizer; " + timer.format(
        call="WorldTokenizer()"
    )
    # With the table cache (written by the runs above), and without it (parse and build).
    for label, env in (("", None), ("_no_cache", {"EAGLEFINCH_CACHE_DIR": ""})):
        loads = [load_time_fresh(fresh, env) for _ in range(3)]
        timed = [x for x in loads if not isinstance(x, str)]
        if timed:
            results[name][f"load_s_fresh_process{label}"] = min(w for w, _ in timed)
            results[name][f"load_s_fresh_process{label}_cpu"] = min(c for _, c in timed)
        else:
            results[name][f"load_s_fresh_process{label}"] = loads[0]
    results[name]["load_s_in_process"], results[name]["load_s_in_process_cpu"], _ = best(WorldTokenizer, 3)
    if "missing" not in results[reference_name]:
        ref_fresh = "import time; from rwkv.rwkv_tokenizer import TRIE_TOKENIZER; " + timer.format(
            call=f"TRIE_TOKENIZER({str(VOCAB)!r})"
        )
        ref_load = load_time_fresh(ref_fresh)
        if isinstance(ref_load, str):
            results[reference_name]["load_s_fresh_process"] = ref_load
        else:
            wall, cpu = ref_load
            results[reference_name]["load_s_fresh_process"] = wall
            results[reference_name]["load_s_fresh_process_cpu"] = cpu

    # Several processes on a file of the same text.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        path.write_bytes(data * 4)
        expected_count = ours.count(data * 4)
        for processes in (1, 2):
            wall, _, count = best(
                lambda n=processes: ours.count_file(path, processes=n), 2, before=ours.clear_cache
            )
            results[name][f"encode_file_MBps_{processes}_processes"] = 4 * n_bytes / wall / 1e6
            results[name][f"encode_file_{processes}_processes_count_ok"] = count == expected_count

    ratios = {}
    ours_result = results[name]
    for peer_name in (reference_name, rust_name):
        peer = results[peer_name]
        if "encode_MBps" in peer:
            ratios[f"encode cold / {peer_name}"] = ours_result["encode_MBps_cold"] / peer["encode_MBps"]
            ratios[f"encode warm / {peer_name}"] = ours_result["encode_MBps_warm"] / peer["encode_MBps"]
            ratios[f"decode / {peer_name}"] = ours_result["decode_MBps"] / peer["decode_MBps"]
    reference_load = results[reference_name].get("load_s_fresh_process")
    for label in ("", "_no_cache"):
        ours_load = ours_result.get(f"load_s_fresh_process{label}")
        if isinstance(reference_load, float) and isinstance(ours_load, float):
            ratios[f"load reference / ours{label}"] = reference_load / ours_load
    for peer_name in (reference_name, rust_name):
        peer = results[peer_name]
        if "encode_MBps_cpu" in peer:
            ratios[f"encode cold / {peer_name} (CPU)"] = (
                ours_result["encode_MBps_cold_cpu"] / peer["encode_MBps_cpu"]
            )
            ratios[f"encode warm / {peer_name} (CPU)"] = (
                ours_result["encode_MBps_warm_cpu"] / peer["encode_MBps_cpu"]
            )
            ratios[f"decode / {peer_name} (CPU)"] = ours_result["decode_MBps_cpu"] / peer["decode_MBps_cpu"]

    try:
        info["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    report = {
        "benchmark": "tokenizer_speed",
        "command": "python benchmarks/tokenizer_speed.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "machine": info,
        "versions": versions(),
        "text": text_info,
        "method": (
            "MB/s = UTF-8 bytes of the text / best time of the repeats, runs interleaved. Wall-clock "
            "figures depend on what else the machine runs (see the load averages); the *_cpu figures "
            "use this process's CPU time and are steadier on a shared machine. Encode takes str and "
            "returns a list of ints; decode takes that list and returns str. eaglefinch cold: its "
            "cache of chunk encodings cleared before each run; warm: kept from the run before."
        ),
        "results": results,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({"results": results, "ratios": ratios}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
