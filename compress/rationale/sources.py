"""Where rationales come from: a file, a local GGUF model (llama.cpp), or an OpenAI-compatible server.

Teacher spec strings (`make_source`, CLI ``--teacher``):

- ``file:NAME`` the rationales already in the task file under teacher NAME (``file:palm``).
- ``path/to/model.gguf`` or a zoo name (``gemma3-270m``): llama.cpp in this process.
- ``http(s)://HOST[:PORT]/v1#MODEL``: chat completions at that base URL (Ollama, vLLM, llama.cpp
  server, any OpenAI-compatible endpoint) for MODEL (or give ``model=`` / ``--model``). The API key is
  read from the environment variable ``api_key_env`` (default OPENAI_API_KEY); local servers need none.

Errors: `TransientSourceError` (timeouts, 408/409/429/5xx: retried per record), `RecordFailed` (this
record cannot be generated, e.g. its prompt is too long), `MalformedResponse` (the server answered
something that is not a chat completion) and `SourceUnreachable` (nothing answers at the URL, after
the client's own retries). All are `SlimkitError`s with one line.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

from compress.errors import SlimkitError
from compress.rationale.prompts import Prompt
from compress.rationale.tasks import TaskRecord

DEFAULT_STOP = ("\nQ:",)  # a completion that runs on into a next example is cut there


class TransientSourceError(SlimkitError):
    """Worth retrying (timeout, rate limit, server error)."""


class RecordFailed(SlimkitError):
    """This record cannot be generated; the others can (counted as failed, retried on the next run)."""


class MalformedResponse(SlimkitError):
    """The server's answer is not a chat completion with text."""


class SourceUnreachable(SlimkitError):
    """Nothing answers at the teacher's URL."""


class RationaleSource(Protocol):
    name: str  # default teacher name
    max_concurrency: int  # how many generate() calls may run at once

    def generate(self, prompt: Prompt, record: TaskRecord | None = None) -> str:
        """The teacher's text for PROMPT (RECORD is given for sources that look rationales up)."""
        ...


class PrecomputedSource:
    """Rationales already in the task records (``rationales[teacher]``)."""

    max_concurrency = 64

    def __init__(self, teacher: str):
        if not teacher:
            raise SlimkitError("file: needs a teacher name, e.g. file:palm")
        self.name = teacher

    def generate(self, prompt: Prompt, record: TaskRecord | None = None) -> str:
        if record is None:
            raise SlimkitError("PrecomputedSource.generate needs the record")
        text = (record.rationales or {}).get(self.name)
        if not text:
            raise RecordFailed(f"record {record.id} has no rationale from teacher {self.name!r}")
        return text


class LlamaCppSource:
    """A GGUF model run by llama-cpp-python in this process (one generation at a time). CHAT None: chat
    messages through the GGUF's chat template when it has one, else the prompt as plain text (base models)."""

    max_concurrency = 1

    def __init__(self, gguf_path: str | os.PathLike, *, name: str | None = None, n_ctx: int = 2048,
                 max_tokens: int = 128, temperature: float = 0.0, seed: int = 0, threads: int | None = None,
                 chat: bool | None = None, stop: tuple[str, ...] = DEFAULT_STOP):
        path = Path(gguf_path)
        if not path.is_file():
            raise SlimkitError(f"teacher model {path} not found")
        try:
            from llama_cpp import Llama
        except ImportError:
            raise SlimkitError("a GGUF teacher needs llama-cpp-python: pip install 'slimkit[llama]'") from None
        try:
            self._llm = Llama(model_path=str(path), n_ctx=n_ctx, seed=seed, n_threads=threads, verbose=False)
        except Exception as exc:  # noqa: BLE001 (ValueError, RuntimeError, jinja2 errors of a damaged template)
            raise SlimkitError(f"llama.cpp cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        self.name = name or path.stem
        if chat is None:  # without a template llama-cpp-python falls back to llama-2 tags a base model echoes
            chat = "tokenizer.chat_template" in self._llm.metadata
        self.max_tokens, self.temperature, self.seed, self.chat, self.stop = max_tokens, temperature, seed, chat, list(stop)
        self._lock = threading.Lock()  # a llama_cpp.Llama is not thread-safe

    def generate(self, prompt: Prompt, record: TaskRecord | None = None) -> str:
        # temperature 0 -> greedy; otherwise sampling seeded per call, so reruns give the same text
        kw: dict[str, Any] = dict(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed,
                                  stop=self.stop, top_k=1 if self.temperature == 0 else 40)
        try:
            with self._lock:
                if self.chat:
                    out = self._llm.create_chat_completion(messages=_messages(prompt), **kw)
                    return _chat_content(out)
                out = self._llm.create_completion(prompt.text, **kw)
                return _completion_text(out)
        except ValueError as exc:  # e.g. "Requested tokens (2100) exceed context window of 2048"
            raise RecordFailed(f"llama.cpp: {exc}") from None


class OpenAISource:
    """Chat completions (or plain completions, CHAT False) from an OpenAI-compatible endpoint, with the
    `openai` client (its retries and backoff)."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 2, max_tokens: int = 128, temperature: float = 0.0, seed: int = 0,
                 stop: tuple[str, ...] = DEFAULT_STOP, max_concurrency: int = 16, name: str | None = None,
                 chat: bool = True):
        try:
            import openai
        except ImportError:
            raise SlimkitError("an HTTP teacher needs the openai client: pip install 'slimkit[rationale]'") from None
        if not model:
            raise SlimkitError(f"name the model served at {base_url}: {base_url}#MODEL or --model MODEL")
        # Local servers (llama.cpp, Ollama, vLLM without --api-key) ignore the key, but the client wants one.
        key = os.environ.get(api_key_env) or "no-key"
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.base_url, self.model, self.max_retries = base_url, model, max_retries
        self.name = name or model
        self.max_tokens, self.temperature, self.seed, self.stop = max_tokens, temperature, seed, list(stop)
        self.max_concurrency, self.chat = max_concurrency, chat

    def generate(self, prompt: Prompt, record: TaskRecord | None = None) -> str:
        o = self._openai
        kw: dict[str, Any] = dict(model=self.model, max_tokens=self.max_tokens, temperature=self.temperature,
                                  seed=self.seed, stop=self.stop)
        try:
            if self.chat:
                resp = self._client.chat.completions.create(messages=_messages(prompt), **kw)
            else:
                resp = self._client.completions.create(prompt=prompt.text, **kw)
        except o.APITimeoutError:
            raise TransientSourceError(f"{self.base_url} timed out") from None
        except o.APIConnectionError as exc:
            raise SourceUnreachable(f"cannot reach {self.base_url} ({_cause(exc)}) after {self.max_retries} "
                                    "retries: start the server or fix the teacher URL") from None
        except o.APIStatusError as exc:
            raise _status_error(self.base_url, self.model, exc) from None
        except (ValueError, TypeError, o.APIResponseValidationError) as exc:  # body is not JSON / not the schema
            raise MalformedResponse(f"{self.base_url} sent a malformed response ({type(exc).__name__}: "
                                    f"{str(exc)[:120]})".replace("\n", " ")) from None
        return _chat_content(resp) if self.chat else _completion_text(resp)


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}".split("\n")[0][:160]


def _status_error(base_url: str, model: str, exc: Any) -> SlimkitError:
    code = exc.status_code
    msg = f"{base_url} answered HTTP {code}: {str(exc.message)[:160]}".replace("\n", " ")
    if code in (408, 409, 429) or code >= 500:
        return TransientSourceError(msg)
    if code in (401, 403):
        return SlimkitError(f"{msg} (set the API key in the environment variable named by --api-key-env)")
    if code == 404:
        return SlimkitError(f"{msg} (is {model!r} served there, and does the URL end in /v1?)")
    return RecordFailed(msg)


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return msgs + [{"role": "user", "content": prompt.user}]


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _chat_content(resp: Any) -> str:
    """choices[0].message.content of a chat completion (an openai object or llama.cpp's dict)."""
    choices = _get(resp, "choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("response has no choices")
    content = _get(_get(choices[0], "message"), "content")
    if not isinstance(content, str):
        raise MalformedResponse("response has no choices[0].message.content")
    return content


def _completion_text(resp: Any) -> str:
    choices = _get(resp, "choices")
    if not isinstance(choices, list) or not choices or not isinstance(_get(choices[0], "text"), str):
        raise MalformedResponse("completion has no choices[0].text")
    return _get(choices[0], "text")


def make_source(spec: str, *, model: str | None = None, name: str | None = None, max_tokens: int = 128,
                temperature: float = 0.0, seed: int = 0, timeout: float = 60.0, max_retries: int = 2,
                api_key_env: str = "OPENAI_API_KEY", n_ctx: int = 2048, concurrency: int = 16,
                chat: bool | None = None, stop: tuple[str, ...] = DEFAULT_STOP) -> RationaleSource:
    """A source from a teacher spec (see the module docstring). CHAT None: chat for HTTP endpoints and for
    GGUFs with a chat template; False: plain completion of the prompt text. STOP: where a completion is cut."""
    if spec.startswith("file:"):
        return PrecomputedSource(name or spec[len("file:"):])
    if spec.startswith(("http://", "https://")):
        base_url, _, fragment = spec.partition("#")
        return OpenAISource(base_url.rstrip("/"), model or fragment, api_key_env=api_key_env, timeout=timeout,
                            max_retries=max_retries, max_tokens=max_tokens, temperature=temperature, seed=seed,
                            max_concurrency=concurrency, name=name, chat=chat is not False, stop=stop)
    if spec.endswith(".gguf"):
        return LlamaCppSource(spec, name=name, n_ctx=n_ctx, max_tokens=max_tokens, temperature=temperature, seed=seed,
                              chat=chat, stop=stop)
    from compress import zoo

    if spec in zoo.ZOO:
        return LlamaCppSource(zoo.get(spec).path(), name=name or spec, n_ctx=n_ctx, max_tokens=max_tokens,
                              temperature=temperature, seed=seed, chat=chat, stop=stop)
    raise SlimkitError(f"unknown teacher {spec!r}: use file:NAME, a .gguf file, a zoo name ({', '.join(zoo.ZOO)}) "
                       "or http(s)://HOST/v1#MODEL")
