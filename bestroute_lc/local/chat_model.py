"""``ChatLlamaCppLocal``: a LangChain chat model over an in-process llama.cpp (llama-cpp-python).

What it guarantees:

* **The GGUF's own chat template.** The prompt is rendered with the Jinja template stored in
  the file (``tokenizer.chat_template``), never a built-in look-alike llama-cpp-python may
  guess, and tokenized with the model's special tokens, as llama-cpp-python's own chat
  handler does. RoPE settings come from the file (``rope_freq_base`` is never passed).
* **Exact usage.** ``usage_metadata`` holds the prompt and completion token counts that
  llama.cpp reports for the request. With ``n`` > 1 the prompt is evaluated once (the KV
  cache keeps it between the samples) and counted once; every returned message carries the
  whole request's usage, as OpenAI's ``n`` does, so the pool bills it as ``NBilling.NATIVE``.
* **n samples, temperature, max_tokens, stop, seed**, per instance or per call. Sample ``i``
  uses ``seed + i`` when a seed is given, else a fresh random seed (llama-cpp-python's own
  default would replay the same seed chain in every process). Each request starts from an
  empty KV cache (its n samples then share the evaluated prompt), so a seeded request gives
  the same samples again, streamed or not: a cache reused across requests evaluates the
  prompt in other batches, and the slightly different logits change what is sampled.
* **Thread safety.** One lock serialises every use of the ``Llama`` object (it is not
  thread-safe); loading happens once, under its own lock.
* **Cancellation.** An async call that is cancelled (for example by the pool's timeout) stops
  its generation at the next token, so the model is free for the next request; the sync
  path cannot be interrupted and runs to ``max_tokens`` at most.
* **Streaming** (``stream`` / ``astream``): text chunks as tokens arrive, stop strings held
  back until they are ruled out, usage on the last chunk (same counts as ``invoke``).

Multimodal content and tool calling are not supported (a ``ValueError`` says so).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from bestroute_lc.conversation import message_text

__all__ = ["ChatLlamaCppLocal", "GenerationCancelled"]

#: Sampling options a call may override (``model.invoke(..., temperature=0.2, n=4)``).
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed", "n")
#: Call options accepted and ignored (LangChain or the engine may pass them).
_IGNORED_KEYS = ("stream_usage",)


#: Loading is serialised across instances: llama-cpp-python silences a load by pointing file
#: descriptors 1 and 2 at /dev/null and restoring them afterwards, so two loads in parallel
#: threads can restore each other's /dev/null and leave the process without stdout/stderr.
_LOAD_LOCK = threading.Lock()


class GenerationCancelled(RuntimeError):
    """The caller cancelled the request; raised in the worker thread that generated."""


def _text_of(message: BaseMessage) -> str:
    """The message's text (``conversation.message_text``); any non-text block is refused."""
    if not isinstance(message.content, str):
        for block in message.content:
            if not (isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")):
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise ValueError(f"ChatLlamaCppLocal takes text only; got a {kind!r} content block")
    return message_text(message)


def _role_of(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        if message.tool_calls:
            raise ValueError("ChatLlamaCppLocal does not support tool calls")
        return "assistant"
    if isinstance(message, ChatMessage) and message.role in {"system", "user", "assistant"}:
        return message.role
    raise ValueError(f"ChatLlamaCppLocal cannot send a {type(message).__name__} (system, user and assistant turns only)")


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class ChatLlamaCppLocal(BaseChatModel):
    """A GGUF model run in-process by llama.cpp, as a LangChain chat model.

    Build it from a file (``ChatLlamaCppLocal(model_path=..., model_name=...)``) or from a
    packaged model with :meth:`from_package` (``bestroute_lc.local.models``). The model is
    loaded on first use.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    #: The model id reported in ``response_metadata`` and used for pool member names.
    model_name: str
    #: Context window (prompt + answer). 4096 covers the pool's prompts and answers.
    n_ctx: int = Field(default=4096, gt=0)
    #: Prompt tokens evaluated per batch.
    n_batch: int = Field(default=512, gt=0)
    #: CPU threads for generation and prompt evaluation; None = llama-cpp-python's default.
    n_threads: int | None = Field(default=None, gt=0)
    #: Sampling defaults (llama-cpp-python's chat defaults except temperature).
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.0, gt=0)
    max_tokens: int | None = Field(default=256, gt=0)
    #: Base seed; sample i of a call uses seed + i. None = random seeds.
    seed: int | None = None
    #: Samples per call (one ChatGeneration each).
    n: int = Field(default=1, ge=1)
    stop: list[str] | None = None
    #: Prepended as a system turn when the conversation has none (SmolLM2 needs one).
    default_system_message: str | None = None
    verbose: bool = False

    _llama: Any = PrivateAttr(default=None)
    _formatter: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)
    _load_lock: Any = PrivateAttr(default_factory=threading.Lock)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_package(cls, model: str, *, cache_dir: str | None = None, **kwargs: Any) -> ChatLlamaCppLocal:
        """A chat model over a packaged GGUF (``bestroute_lc.local.models.MODELS``), located,
        assembled and verified first; ``default_system_message`` defaults to the model's."""
        from bestroute_lc.local.models import MODELS, model_path

        if model not in MODELS:
            raise ValueError(f"unknown local model {model!r}; known: {sorted(MODELS)}")
        spec = MODELS[model]
        kwargs.setdefault("default_system_message", spec.default_system_message)
        kwargs.setdefault("model_name", spec.name)
        return cls(model_path=str(model_path(spec, cache_dir)), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_path": self.model_path,
            "n_ctx": self.n_ctx,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "max_tokens": self.max_tokens,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "llama-cpp"
        params["ls_model_name"] = self.model_name
        return params

    def load(self) -> Any:
        """The ``llama_cpp.Llama`` object, loaded once (thread-safe)."""
        if self._llama is not None:
            return self._llama
        with self._load_lock, _LOAD_LOCK:
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
                except ImportError as exc:  # pragma: no cover - depends on the environment
                    raise ImportError("ChatLlamaCppLocal needs llama-cpp-python: pip install llama-cpp-python") from exc
                options: dict[str, Any] = {"n_ctx": self.n_ctx, "n_batch": self.n_batch, "verbose": self.verbose}
                if self.n_threads is not None:
                    options["n_threads"] = self.n_threads
                    options["n_threads_batch"] = self.n_threads
                llama = Llama(model_path=self.model_path, **options)
                template = llama.metadata.get("tokenizer.chat_template")
                if not template:
                    raise ValueError(f"{self.model_path} has no chat template (tokenizer.chat_template); use an instruct model")
                eos_id, bos_id = llama.token_eos(), llama.token_bos()
                self._formatter = Jinja2ChatFormatter(
                    template=template,
                    eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
                    bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
                )
                self._llama = llama
        return self._llama

    # -- prompt -----------------------------------------------------------------------------
    def _chat_messages(self, messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
        if not messages:
            raise ValueError("ChatLlamaCppLocal needs at least one message")
        out = [{"role": _role_of(m), "content": _text_of(m)} for m in messages]
        if self.default_system_message and not any(m["role"] == "system" for m in out):
            out.insert(0, {"role": "system", "content": self.default_system_message})
        return out

    def render_prompt(self, messages: Sequence[BaseMessage]) -> str:
        """The prompt text the model sees (the GGUF's chat template, generation prompt added)."""
        self.load()
        return self._formatter(messages=self._chat_messages(messages)).prompt

    def prompt_tokens(self, messages: Sequence[BaseMessage]) -> list[int]:
        llama = self.load()
        text = self.render_prompt(messages)
        # The template writes the special tokens (BOS included, where the model has one).
        return llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    # -- options ----------------------------------------------------------------------------
    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - set(_SAMPLING_KEYS) - set(_IGNORED_KEYS))
        if unknown:
            raise ValueError(f"ChatLlamaCppLocal: unsupported call option(s) {unknown}; supported: {list(_SAMPLING_KEYS)} and stop")
        options = {key: getattr(self, key) for key in _SAMPLING_KEYS}
        options.update({k: v for k, v in kwargs.items() if k in _SAMPLING_KEYS and v is not None})
        if int(options["n"]) < 1:
            raise ValueError(f"n must be >= 1, got {options['n']}")
        stops = list(stop if stop is not None else self.stop or [])
        options["stop"] = [s for s in stops if s]
        return options

    def _seeds(self, seed: int | None, n: int) -> list[int]:
        if seed is None:
            return [secrets.randbits(31) for _ in range(n)]
        return [(int(seed) + i) & 0x7FFFFFFF for i in range(n)]

    def _max_tokens(self, prompt_len: int, requested: int | None) -> int:
        room = self.n_ctx - prompt_len
        if room < 1:
            raise ValueError(f"the prompt has {prompt_len} tokens; the context window is {self.n_ctx} (n_ctx)")
        return room if requested is None else min(int(requested), room)

    def _completion_kwargs(self, options: dict[str, Any], max_tokens: int, seed: int) -> dict[str, Any]:
        return {
            "temperature": float(options["temperature"]),
            "top_p": float(options["top_p"]),
            "top_k": int(options["top_k"]),
            "min_p": float(options["min_p"]),
            "repeat_penalty": float(options["repeat_penalty"]),
            "max_tokens": max_tokens,
            "seed": seed,
        }

    # -- one sample -------------------------------------------------------------------------
    def _sample(self, prompt: list[int], options: dict[str, Any], seed: int, cancel: threading.Event | None) -> tuple[str, str, int, int]:
        """(text, finish_reason, prompt_tokens, completion_tokens) as llama.cpp reports them."""
        from llama_cpp import StoppingCriteriaList

        llama = self.load()
        max_tokens = self._max_tokens(len(prompt), options["max_tokens"])
        criteria = StoppingCriteriaList([lambda ids, logits: cancel is not None and cancel.is_set()])
        with self._lock:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled()
            response = llama.create_completion(
                prompt=prompt, stream=False, stop=options["stop"] or None, stopping_criteria=criteria,
                **self._completion_kwargs(options, max_tokens, seed),
            )
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled()
        choice, usage = response["choices"][0], response["usage"]
        return choice["text"], choice.get("finish_reason") or "stop", int(usage["prompt_tokens"]), int(usage["completion_tokens"])

    def _sample_stream(
        self, prompt: list[int], options: dict[str, Any], seed: int, cancel: threading.Event | None, result: dict[str, Any]
    ) -> Iterator[str]:
        """Text pieces of one sample; fills ``result`` with finish_reason and token counts.

        Stop strings are applied here, not by llama.cpp, so the number of sampled tokens
        is known exactly: a logits processor counts sampling steps, and a sample that ends
        on an end-of-generation token (which llama.cpp does not count) sampled one more
        step than it reports.
        """
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        llama = self.load()
        max_tokens = self._max_tokens(len(prompt), options["max_tokens"])
        stops: list[str] = options["stop"]
        steps = 0

        def count(input_ids: Any, scores: Any) -> Any:
            nonlocal steps
            steps += 1
            return scores

        criteria = StoppingCriteriaList([lambda ids, logits: cancel is not None and cancel.is_set()])
        finish = "length"
        with self._lock:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled()
            llama.reset()  # as in _generate: a seed reproduces the sample
            chunks = llama.create_completion(
                prompt=prompt, stream=True, stop=None, stopping_criteria=criteria,
                logits_processor=LogitsProcessorList([count]), **self._completion_kwargs(options, max_tokens, seed),
            )
            text, emitted, stopped_by_string = "", 0, False
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    text += choice["text"]
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    hits = [text.find(s) for s in stops if s in text]
                    if hits:
                        cut = min(hits)
                        if cut > emitted:
                            yield text[emitted:cut]
                        emitted, stopped_by_string, finish = cut, True, "stop"
                        break
                    safe = len(text) - _held_back(text, stops)
                    if safe > emitted:
                        yield text[emitted:safe]
                        emitted = safe
            finally:
                chunks.close()
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled()
            if not stopped_by_string and len(text) > emitted:
                yield text[emitted:]
        # Ended on an end-of-generation token: sampled but not part of the completion.
        ended_on_eog = finish == "stop" and not stopped_by_string
        result.update(finish_reason=finish, prompt_tokens=len(prompt), completion_tokens=steps - 1 if ended_on_eog else steps)

    # -- LangChain entry points ----------------------------------------------------------------
    def _result(self, samples: list[tuple[str, str, int, int]], seeds: list[int]) -> ChatResult:
        prompt_tokens = samples[0][2]
        completion_tokens = sum(s[3] for s in samples)
        usage = UsageMetadata(input_tokens=prompt_tokens, output_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
        generations = []
        for (text, finish, _, own_completion), seed in zip(samples, seeds):
            metadata = {"model_name": self.model_name, "finish_reason": finish, "seed": seed, "completion_tokens": own_completion}
            message = AIMessage(content=text, usage_metadata=dict(usage), response_metadata=metadata)
            generations.append(ChatGeneration(message=message, generation_info={"finish_reason": finish}))
        token_usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        return ChatResult(generations=generations, llm_output={"token_usage": token_usage, "model_name": self.model_name})

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        """``generate`` over several conversations: token usage summed over the requests."""
        total: Counter[str] = Counter()
        for output in llm_outputs:
            total.update((output or {}).get("token_usage") or {})
        return {"token_usage": dict(total), "model_name": self.model_name}

    def _generate_with_cancel(
        self, messages: list[BaseMessage], stop: list[str] | None, cancel: threading.Event | None, kwargs: dict[str, Any]
    ) -> ChatResult:
        options = self._options(stop, kwargs)
        prompt = self.prompt_tokens(messages)
        seeds = self._seeds(options["seed"], int(options["n"]))
        with self._lock:  # the n samples back to back: the prompt stays in the KV cache
            self.load().reset()  # every request starts from an empty cache: a seed reproduces it
            samples = [self._sample(prompt, options, seed, cancel) for seed in seeds]
        return self._result(samples, seeds)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate_with_cancel(messages, stop, None, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(None, self._generate_with_cancel, messages, stop, cancel, kwargs)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next token and releases the model
            # Its GenerationCancelled is expected: retrieve it so asyncio does not log it.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise

    def _stream_with_cancel(
        self, messages: list[BaseMessage], stop: list[str] | None, cancel: threading.Event | None, kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        options = self._options(stop, kwargs)
        if int(options["n"]) != 1:
            raise ValueError("streaming draws one sample; n must be 1")
        prompt = self.prompt_tokens(messages)
        (seed,) = self._seeds(options["seed"], 1)
        result: dict[str, Any] = {}
        for piece in self._sample_stream(prompt, options, seed, cancel, result):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        usage = UsageMetadata(
            input_tokens=result["prompt_tokens"],
            output_tokens=result["completion_tokens"],
            total_tokens=result["prompt_tokens"] + result["completion_tokens"],
        )
        metadata = {"model_name": self.model_name, "finish_reason": result["finish_reason"], "seed": seed}
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=usage, response_metadata=metadata, chunk_position="last"),
            generation_info={"finish_reason": result["finish_reason"]},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._stream_with_cancel(messages, stop, None, kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for chunk in self._stream_with_cancel(messages, stop, cancel, kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                loop.call_soon_threadsafe(queue.put_nowait, done)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                if run_manager and item.text:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
            await worker
        finally:
            cancel.set()  # a consumer that stops early or is cancelled frees the model
