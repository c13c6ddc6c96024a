"""Fuzz slimkit's CLI entry points with mutated inputs (seeded, bounded).

Each mutant goes through `slimkit.cli.main` in this process and must end in exit 0 or slimkit's
one-line error (exit 2) within a time cap: no traceback, no signal, no hang. Inputs, from a tiny
random llama: GGUF files (`slimkit eval`: byte flips in the header and metadata, and targeted
rewrites of counts, string lengths, array types, tensor dims and offsets), HF directories
(`slimkit eval`: config.json fields, tokenizer.json and safetensors header bytes), recipe YAML
(`slimkit run --check`: parsed and every stage checked against its verb, no work run) and imatrix files
(`slimkit export gguf --imatrix`). A llama.cpp abort would kill this process: the test runs the
campaign as a child process, so the signal is reported with the mutant that caused it (printed
before it runs).

    .venv/bin/python scripts/fuzz.py --mutants 1200 --seed 0 [--budget-s 110]   # `make fuzz`: --mutants 20000
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PER_MUTANT_S = 20


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang


def run_cli(argv: list[str]) -> tuple[int, str]:
    from slimkit.cli import main

    err, out = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(PER_MUTANT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(argv)
    except SystemExit as exc:   # argparse
        rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        signal.alarm(0)
    return rc, err.getvalue()


def _bad_result(rc: int, stderr: str) -> str | None:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(("\r", "Writing", "perplexity"))
             and "it/s]" not in line and "%|" not in line]
    if rc == 0:
        return None
    if rc != 2:
        return f"exit {rc}"
    errors = [line for line in lines if line.startswith("slimkit: error:") or line.startswith("usage:")
              or "error:" in line]
    if "Traceback" in stderr:
        return "traceback: " + stderr.strip().splitlines()[-1][:200]
    if not errors:
        return "exit 2 without slimkit's error line: " + stderr.strip()[-200:]
    return None


# ---- mutators -------------------------------------------------------------------------------

def gguf_mutants(src: bytes, rng: random.Random):
    """(description, mutated bytes) of a GGUF file."""
    header_end = min(len(src), 64 * 1024)
    kinds = ["flip", "flip", "count", "strlen", "arraytype", "truncate", "dims", "offset", "zero-run"]
    while True:
        kind = rng.choice(kinds)
        data = bytearray(src)
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(header_end)
                data[i] ^= 1 << rng.randrange(8)
        elif kind == "count":   # n_tensors / n_kv (u64 at 8 and 16)
            at = rng.choice((8, 16))
            struct.pack_into("<Q", data, at, rng.choice((0, 1, 2**31, 2**63, struct.unpack_from("<Q", data, at)[0] + 1)))
        elif kind == "strlen":   # a u64 length field somewhere in the metadata
            at = rng.randrange(24, header_end - 8)
            struct.pack_into("<Q", data, at, rng.choice((0, 1, 2**20, 2**40, 2**64 - 1)))
        elif kind == "arraytype":   # a u32 type tag
            at = rng.randrange(24, header_end - 4)
            struct.pack_into("<I", data, at, rng.choice((0, 8, 9, 12, 13, 255, 2**31)))
        elif kind == "truncate":
            del data[rng.randrange(24, len(data)):]
        elif kind == "dims":   # rewrite a plausible dim (u64 equal to a model width)
            widths = [struct.pack("<Q", w) for w in (64, 128, 300, 512)]
            w = rng.choice(widths)
            at = data.find(w, rng.randrange(24, header_end))
            if at < 0:
                continue
            struct.pack_into("<Q", data, at, rng.choice((0, 1, 63, 65, 2**32)))
        elif kind == "offset":   # the last u64 before the data section is a tensor offset
            at = rng.randrange(header_end // 2, header_end - 8)
            struct.pack_into("<Q", data, at, rng.choice((0, 31, 2**40, len(src))))
        else:
            i = rng.randrange(24, header_end - 3)
            data[i:i + 3] = b"\0\0\0"
        yield kind, bytes(data)


def json_mutants(obj: dict, rng: random.Random):
    keys = list(obj)
    values = [None, 0, -1, 1, 2**40, 1.5, "x", "", [], {}, True, "llama", "gemma3_text", "mamba"]
    while True:
        d = json.loads(json.dumps(obj))
        for _ in range(rng.randint(1, 3)):
            k = rng.choice(keys)
            if rng.random() < 0.15:
                d.pop(k, None)
            else:
                d[k] = rng.choice(values)
        yield d


RECIPES = [
    "stages:\n  - load: {source: SRC}\n  - prune: {target-params: 0.5}\n  - quantise: {}\n",
    "stages:\n  - load: {source: SRC}\n  - prune: {target-params: x}\n",
    "stages: [1, 2\n",
    "stages:\n  - load: {source: /nonexistent}\n  - export-gguf: {type: Q9_9}\n",
    "stages:\n  - distill: {tokens: -5}\n",
    "stages:\n  - load: {source: SRC}\n  - eval: {text: /missing.txt}\n  - profile: {devices: [nowhere]}\n",
    "{}\n", "stages: null\n", "stages:\n  - {}\n", "stages:\n  - load: SRC\n",
]


def imatrix_mutants(src: bytes, rng: random.Random):
    while True:
        data = bytearray(src)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        yield bytes(data)


def build_inputs(root: Path):
    from conftest import TRAIN_TEXT, tiny_llama

    from compress.checkpoint import save
    from export.gguf.writer import export_gguf

    ckpt = tiny_llama(0)
    gguf_path = root / "tiny.gguf"
    export_gguf(ckpt, gguf_path, "F32", validate=False)
    hf = save(ckpt, root / "hf")
    text = root / "text.txt"
    text.write_text(TRAIN_TEXT * 2)
    imatrix = root / "tiny.imatrix.gguf"
    from slimkit.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["imatrix", str(hf), "--calib", str(text), "--calib-tokens", "512", "-o", str(imatrix)])
    if rc != 0:
        raise SystemExit("fuzz: could not write the seed imatrix")
    return gguf_path, hf, text, imatrix


def campaign(n: int, seed: int, budget_s: float, root: Path) -> dict:
    rng = random.Random(seed)
    gguf_path, hf, text, imatrix = build_inputs(root)
    src = gguf_path.read_bytes()
    config = json.loads((hf / "config.json").read_text())
    tok_json = json.loads((hf / "tokenizer.json").read_text())
    gm, cm = gguf_mutants(src, rng), json_mutants(config, rng)
    tm = json_mutants({k: tok_json[k] for k in tok_json if k in ("model", "pre_tokenizer", "added_tokens", "decoder",
                                                                   "normalizer", "version")}, rng)
    im = imatrix_mutants(imatrix.read_bytes(), rng)
    weights = hf / "model.safetensors"
    st = weights.read_bytes()
    kinds = ["gguf"] * 6 + ["config", "tokenizer", "safetensors", "recipe", "imatrix"]
    failures, counts, start, spent = [], {}, time.perf_counter(), {}
    for i in range(n):
        if time.perf_counter() - start > budget_s:
            break
        kind = rng.choice(kinds)
        counts[kind] = counts.get(kind, 0) + 1
        case = root / f"case{i % 2}"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir()
        if kind == "gguf":
            what, data = next(gm)
            (case / "m.gguf").write_bytes(data)
            argv = ["eval", str(case / "m.gguf"), "--text", str(text), "--ctx", "32", "--max-chunks", "1", "--json"]
        elif kind in ("config", "tokenizer", "safetensors"):
            shutil.copytree(hf, case / "hf")
            if kind == "config":
                what, d = "config.json", next(cm)
                (case / "hf" / "config.json").write_text(json.dumps(d))
            elif kind == "tokenizer":
                what, d = "tokenizer.json", next(tm)
                (case / "hf" / "tokenizer.json").write_text(json.dumps({**tok_json, **d}))
            else:
                what = "safetensors header"
                data = bytearray(st)
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(min(len(data), 8 + 4096))] ^= 1 << rng.randrange(8)
                (case / "hf" / "model.safetensors").write_bytes(bytes(data))
            argv = ["eval", str(case / "hf"), "--text", str(text), "--ctx", "32", "--max-chunks", "1", "--json"]
        elif kind == "recipe":
            what = "recipe"
            body = rng.choice(RECIPES).replace("SRC", str(hf))
            if rng.random() < 0.5:
                pos = rng.randrange(len(body))
                body = body[:pos] + rng.choice(["{", "}", ":", "\n  - ", "[", "'", "\t"]) + body[pos + 1:]
            (case / "r.yaml").write_text(body)
            argv = ["run", str(case / "r.yaml"), "-o", str(case / "run"), "--check"]
        else:
            what = "imatrix"
            (case / "i.gguf").write_bytes(next(im))
            argv = ["export", "gguf", str(hf), "-o", str(case / "o.gguf"), "--type", "Q4_0", "--imatrix",
                    str(case / "i.gguf"), "--no-validate"]
        print(f"mutant {i}: {kind} ({what})", flush=True)   # the last line names the culprit of a crash
        t0 = time.perf_counter()
        try:
            rc, err = run_cli(argv)
            bad = _bad_result(rc, err)
        except Hang:
            bad = f"no result within {PER_MUTANT_S} s"
        except BaseException as exc:   # anything that escapes main() is a defect
            bad = f"{type(exc).__name__}: {str(exc)[:200]}"
        spent[kind] = spent.get(kind, 0.0) + time.perf_counter() - t0
        if bad:
            failures.append({"mutant": i, "kind": kind, "what": what, "problem": bad})
    return {"mutants": sum(counts.values()), "by_kind": counts, "failures": failures,
            "seconds": round(time.perf_counter() - start, 1),
            "seconds_by_kind": {k: round(v, 1) for k, v in spent.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=110.0, help="stop starting new mutants after this long")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        summary = campaign(a.mutants, a.seed, a.budget_s, Path(tmp))
    text = json.dumps(summary, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text)
    sys.exit(1 if summary["failures"] else 0)


if __name__ == "__main__":
    main()
