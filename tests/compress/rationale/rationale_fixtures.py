"""Fixtures for the rationale tests: a real llama.cpp OpenAI-compatible server on a tiny random GGUF, a stub
HTTP server that misbehaves on purpose, a closed port, and small in-process tasks.

Not a conftest.py (see tests/devices/devices_fixtures.py): test modules import what they use from here.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import free_port  # noqa: E402

from compress.rationale.tasks import TaskRecord

QUESTIONS = [("Where would you keep milk cold?", ["oven", "fridge", "desk"], "fridge"),
             ("What do bees make?", ["honey", "glass", "paper"], "honey"),
             ("Where do fish live?", ["tree", "water", "sand"], "water"),
             ("What do you read?", ["book", "spoon", "shoe"], "book"),
             ("What gives light at night?", ["moon", "rock", "carpet"], "moon"),
             ("What do you sit on?", ["cloud", "chair", "river"], "chair"),
             ("What melts in the sun?", ["ice", "iron", "stone"], "ice"),
             ("What do cows give?", ["milk", "oil", "wool"], "milk")]


def mc_records(n: int = 8, with_rationales: bool = True) -> list[TaskRecord]:
    """Small multiple-choice records (with a `palm` rationale each, for the in-context examples)."""
    out = []
    for i in range(n):
        q, choices, ans = QUESTIONS[i % len(QUESTIONS)]
        rats = {"palm": f"Only {ans} fits the question."} if with_rationales else None
        out.append(TaskRecord(id=f"r{i}", question=q, answer=ans, choices=tuple(choices), rationales=rats))
    return out


def reference_score(model, prompt: list[int], target: list[int]) -> float:
    """Summed log-likelihood of TARGET after PROMPT from one plain forward pass (no cache, no batching)."""
    import torch

    with torch.no_grad():
        logp = model(input_ids=torch.tensor([prompt + target]), use_cache=False).logits[0].float().log_softmax(-1)
    return float(sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(target)))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random llama (ChatML chat template) exported to F16 by slimkit's writer."""
    from tests.conftest import tiny_gguf_file, tiny_llama

    return tiny_gguf_file(tmp_path_factory, tiny_llama(seed=3), "F16", "tiny-f16.gguf")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"llama_cpp.server did not answer {url} in {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def serve_gguf(model: Path, log: Path, n_ctx: int = 2048):
    """`python -m llama_cpp.server` on 127.0.0.1:<free port> serving MODEL; yields the base URL (.../v1)."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    with open(log, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2"],
                                stdout=logf, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def llama_server(tiny_gguf, tmp_path_factory):
    """The llama.cpp server on the tiny random GGUF; yields its base URL."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed (extra `rationale`)")
    with serve_gguf(tiny_gguf, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


class StubServer:
    """An HTTP server answering POST …/chat/completions as `mode` says:
    "ok" a valid completion; "bad-json" 200 with a body that is not JSON; "no-choices" JSON without choices;
    "flaky" 503 on the first request for each prompt, then a valid completion; "wrong" a completion that
    states choice (c) when the gold answer is (a); "bare" only the answer statement. Each request waits `delay` seconds; `max_inflight` is
    the most requests it has had in progress at once."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.requests = self.inflight = self.max_inflight = 0
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.inflight += 1
                    stub.max_inflight = max(stub.max_inflight, stub.inflight)
                time.sleep(stub.delay)
                status, payload = stub.answer(body)
                with stub.lock:
                    stub.inflight -= 1
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body: dict) -> tuple[int, str]:
        with self.lock:
            self.requests += 1
            key = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
            first = key not in self.seen
            self.seen.add(key)
        if self.mode == "bad-json":
            return 200, '{"id": "x", "choices": [ this is not json'
        if self.mode == "no-choices":
            return 200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "stub"})
        if self.mode == "flaky" and first:
            return 503, json.dumps({"error": {"message": "busy, try again"}})
        answer = key.rsplit("Correct answer: ", 1)[-1].split("\n")[0]
        if self.mode == "wrong" and answer.startswith("(a)"):
            answer = "(c)"
        content = f"Because it is the usual one. So the answer is {answer}."
        if self.mode == "bare":
            content = f"So the answer is {answer}."
        return 200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": content}}]})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub_server():
    s = StubServer()
    yield s
    s.close()
