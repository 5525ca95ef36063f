"""``BestRouteChatModel``: BEST-Route as a LangChain chat model.

A thin adapter: it turns LangChain calls into ``BestRouteEngine`` calls and the
engine's ``RouteResult`` into an ``AIMessage`` with usage, cost and the routing decision,
and reports the decision to callbacks (a custom event) and to LangSmith (``llm_output``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import (
    BaseChatModel,
    LangSmithParams,
    LanguageModelInput,
)
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableMap,
    RunnablePassthrough,
    ensure_config,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import (
    convert_to_json_schema,
    convert_to_openai_tool,
)
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticKnownError

from bestroute_lc.artifacts import PolicyChoice
from bestroute_lc.engine import BestRouteEngine, RouteResult
from bestroute_lc.policy import validate_threshold
from bestroute_lc.pool import Pool
from bestroute_lc.rerankers.base import Reranker
from bestroute_lc.sync_bridge import iterate_sync, run_sync
from bestroute_lc.tracing import trace_cost_around_tracers
from bestroute_lc.verifiers import Verifier

#: Name of the custom callback event that carries each routing decision.
DECISION_EVENT = "bestroute_decision"

# LangChain's stream()/astream() do not hand the run manager to _stream/_astream. To
# dispatch the decision event on the right run, stream()/astream() pick the run id
# themselves and leave (config, run id) here for _stream/_astream to find.
_STREAM_RUN: ContextVar[tuple[RunnableConfig, uuid.UUID] | None] = ContextVar("bestroute_stream_run", default=None)


# langchain-core's _generate_with_cache calls _stream/_astream without the run manager when a
# caller streams through invoke (astream_events, LangGraph stream_mode="messages"): the
# overrides below leave it here, so the decision event and the traced cost reach that run.
_RUN_MANAGER: ContextVar[Any] = ContextVar("bestroute_run_manager", default=None)


def _stream_run_config(config: RunnableConfig | None, manager_class: type) -> tuple[RunnableConfig, uuid.UUID]:
    """The config with a run id chosen here, and its callbacks configured here (so the
    tracers of the run are known and get the cost pair around them, ``tracing``)."""
    config = ensure_config(config)
    run_id = config.get("run_id") or uuid.uuid4()
    manager = manager_class.configure(inheritable_callbacks=config.get("callbacks"))
    trace_cost_around_tracers(manager.handlers)
    return {**config, "run_id": run_id, "callbacks": manager}, run_id


def _reset(token: Any) -> None:
    try:
        _STREAM_RUN.reset(token)
    except ValueError:  # generator closed from another context: nothing left to undo
        pass


class BestRouteChatModel(BaseChatModel):
    """Routes each call to the cheapest (pool member, n) expected to match the reference.

    Example:
        .. code-block:: python

            from langchain_openai import ChatOpenAI
            from bestroute_lc import BestRouteChatModel, Pool, PoolMember

            pool = Pool(
                members=[
                    PoolMember.from_model(ChatOpenAI(model="gpt-4o"), name="gpt-4o"),
                    PoolMember.from_model(ChatOpenAI(model="gpt-4o-mini"), name="gpt-4o-mini"),
                ],
                reference="gpt-4o",
            )
            llm = BestRouteChatModel.from_pretrained("artifacts/router", "artifacts/reward", pool=pool, threshold=0.6)
            msg = llm.invoke("Write a haiku about routers")
            msg.response_metadata["bestroute"]  # member, n, p table, estimated/actual cost, scores, latency
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    pool: Pool
    #: The trained router, a ``bestroute_lc.router.RouterPredictor``. Typed ``Any`` because
    #: that module imports torch and this one must not (issue 13); ``_check_router`` keeps
    #: the isinstance check and the error pydantic gave when the field was typed with it.
    router: Any
    #: Picks the best of n samples; the learned reward model by default.
    reranker: Reranker | None = None
    #: Match-probability threshold t of Algorithm 1; override per call with ``.bind(threshold=...)``.
    threshold: float = 0.5
    #: Pin every call to this member (skips the router); per call: ``invoke(..., model=name)``.
    model: str | None = None
    #: LangSmith traces get the cost of every run anyway (``bestroute_lc.tracing``: put
    #: there for the tracer only, invoke and stream alike). This flag also leaves
    #: ``input_cost`` / ``output_cost`` / ``total_cost`` (USD, floats) in the *returned*
    #: message's ``usage_metadata``, for code that reads them there; off by default because
    #: LangChain's ``add_usage`` (``get_usage_metadata_callback``, summing messages) accepts
    #: integers only. Never applied to streamed chunks.
    cost_in_usage_metadata: bool = False
    #: Spend cap in USD for this model object: once the calls' billed cost reaches it,
    #: every call goes to the cheapest member with n = 1 and the decision's reason is "budget".
    spend_cap_usd: float | None = None
    #: A calibrated routing policy (``bestroute_lc.artifacts.PolicyChoice``): ``router``
    #: (Algorithm 1 at its threshold), ``constant`` (always its member with n samples) or
    #: ``verified`` (its member with n samples, verified, then its escalation stages).
    #: None: Algorithm 1 at ``threshold``. ``from_pretrained(..., target_*=...)`` sets it
    #: from the router artifact when calibration stored a policy for that target.
    policy: PolicyChoice | None = None
    #: Verifies the reranked pick of every option but the reference; a rejected pick
    #: escalates (README, "Verified escalation"). None: the policy's named verifier, if any.
    verifier: Verifier | None = None
    #: Escalation stages, (member, n) in order, tried after a rejected pick; the reference
    #: with n = 1 closes them. None: the policy's stages, else the next valid option of a
    #: more expensive member, then the reference.
    escalation: list[tuple[str, int]] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")

    _engine: BestRouteEngine = PrivateAttr()

    @field_validator("router")
    @classmethod
    def _check_router(cls, value: Any) -> Any:
        # Imported at call time: any real router has loaded torch already, so this is free.
        from bestroute_lc.router import RouterPredictor

        if not isinstance(value, RouterPredictor):
            raise PydanticKnownError("is_instance_of", {"class": "RouterPredictor"})
        return value

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value: float) -> float:
        return validate_threshold(value)

    def _resolve_model_profile(self) -> Any:
        """The pool's common ground (``bestroute_lc.pool.common_profile``); langchain-core reads it
        when ``profile`` is not given."""
        from bestroute_lc.pool import common_profile

        return common_profile(self.pool)

    @model_validator(mode="after")
    def _build_engine(self) -> BestRouteChatModel:
        if self.model is not None:
            self.pool[self.model]  # unknown member -> ValueError naming the members
        from bestroute_lc.loading import build_engine

        self._engine, self.threshold, self.verifier = build_engine(
            self.pool, self.router, self.reranker, threshold=self.threshold, threshold_given="threshold" in self.model_fields_set,
            policy=self.policy, verifier=self.verifier, escalation=self.escalation, spend_cap_usd=self.spend_cap_usd,
        )
        return self

    @classmethod
    def from_pretrained(
        cls, router_path: str | Path, reward_path: str | Path | None = None, *, pool: Pool, **kwargs: Any
    ) -> BestRouteChatModel:
        """Load trained artifacts. The pool must be the one the router was trained for;
        members keep an explicitly set ``avg_output_tokens``, others take the router's.

        ``target_*``: use what calibration (``bestroute-train calibrate``) stored for that
        target, e.g. ``target_cost_reduction=0.4``, instead of ``threshold=``: the policy in
        the artifact's ``policies`` when there is one (router, constant or verified; a
        verified policy's verifier is built from its name unless ``verifier=`` is given),
        else the calibrated threshold. ``target="cost_reduction=0.4"`` names the same key
        directly.
        """
        from bestroute_lc.loading import load_pretrained

        # reranker=, device=, target= / target_*= are load_pretrained's; the rest are this model's fields.
        setup = load_pretrained(router_path, reward_path, pool=pool, **kwargs)
        return cls(pool=setup.pool, router=setup.router, reranker=setup.reranker, **setup.settings)

    # -- LangChain plumbing -------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "bestroute"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "members": self.pool.names,
            "reference": self.pool.reference,
            "threshold": self.threshold,
            "max_n": self.router.config.max_n,
        }
        if self.policy is not None:
            params["policy"] = self.policy.kind
        if self.verifier is not None:
            params["verifier"] = self.verifier.name
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="bestroute",
            ls_model_name=kwargs.get("model") or self.model or "bestroute",
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _call_args(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Split one call's kwargs into engine arguments; the rest go to the members."""
        kwargs = dict(kwargs)
        threshold = kwargs.pop("threshold", self.threshold)
        member = kwargs.pop("model", None) or self.model
        kwargs.pop("ls_structured_output_format", None)
        for name in ("temperature", "max_tokens"):
            value = getattr(self, name)
            if value is not None:
                kwargs.setdefault(name, value)
        return {
            "threshold": threshold,
            "member": member,
            "stop": stop or self.stop,
            "call_kwargs": kwargs,
        }

    def _chat_result(self, result: RouteResult) -> ChatResult:
        usage = result.usage or {}
        if self.cost_in_usage_metadata and result.message.usage_metadata is not None:
            result.message.usage_metadata = {  # type: ignore[typeddict-unknown-key]
                **result.message.usage_metadata,
                "input_cost": result.input_cost_usd,
                "output_cost": result.output_cost_usd,
                "total_cost": result.cost_usd,
            }
        llm_output = {
            "token_usage": {
                "prompt_tokens": usage.get("input_tokens", 0),
                "completion_tokens": usage.get("output_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            },
            "model_name": result.member,
            "cost_usd": result.cost_usd,
            "input_cost_usd": result.input_cost_usd,
            "output_cost_usd": result.output_cost_usd,
            "bestroute": result.metadata(),
        }
        return ChatResult(generations=[ChatGeneration(message=result.message)], llm_output=llm_output)

    @staticmethod
    def _decision_event(result: RouteResult) -> dict[str, Any]:
        return {**result.metadata(), "usage": dict(result.usage or {})}

    @staticmethod
    def _event_manager(run_manager: Any, manager_class: type) -> Any:
        return manager_class(
            handlers=run_manager.handlers,
            inheritable_handlers=run_manager.inheritable_handlers,
            parent_run_id=run_manager.parent_run_id,
            tags=run_manager.tags,
            inheritable_tags=run_manager.inheritable_tags,
            metadata=run_manager.metadata,
            inheritable_metadata=run_manager.inheritable_metadata,
        )

    @staticmethod
    def _stream_event_manager(manager_class: type) -> tuple[Any, uuid.UUID] | None:
        current = _STREAM_RUN.get()
        if current is None:
            return None
        config, run_id = current
        manager = manager_class.configure(
            inheritable_callbacks=config.get("callbacks"),
            inheritable_tags=config.get("tags"),
            inheritable_metadata=config.get("metadata"),
        )
        return manager, run_id

    def _dispatch(self, result: RouteResult, run_manager: CallbackManagerForLLMRun | None) -> None:
        if run_manager is not None:
            target = (self._event_manager(run_manager, CallbackManager), run_manager.run_id)
        else:
            target = self._stream_event_manager(CallbackManager)
        if target is not None:
            target[0].on_custom_event(DECISION_EVENT, self._decision_event(result), run_id=target[1])

    async def _adispatch(self, result: RouteResult, run_manager: AsyncCallbackManagerForLLMRun | None) -> None:
        if run_manager is not None:
            target = (self._event_manager(run_manager, AsyncCallbackManager), run_manager.run_id)
        else:
            target = self._stream_event_manager(AsyncCallbackManager)
        if target is not None:
            await target[0].on_custom_event(DECISION_EVENT, self._decision_event(result), run_id=target[1])

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        config, run_id = _stream_run_config(config, CallbackManager)
        token = _STREAM_RUN.set((config, run_id))
        try:
            yield from super().stream(input, config, stop=stop, **kwargs)
        finally:
            _reset(token)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        config, run_id = _stream_run_config(config, AsyncCallbackManager)
        token = _STREAM_RUN.set((config, run_id))
        try:
            async for chunk in super().astream(input, config, stop=stop, **kwargs):
                yield chunk
        finally:
            _reset(token)

    def _generate_with_cache(self, messages: list[BaseMessage], stop: list[str] | None = None,
                             run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        token = _RUN_MANAGER.set(run_manager)
        try:
            return super()._generate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)
        finally:
            _RUN_MANAGER.reset(token)

    async def _agenerate_with_cache(self, messages: list[BaseMessage], stop: list[str] | None = None,
                                    run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        token = _RUN_MANAGER.set(run_manager)
        try:
            return await super()._agenerate_with_cache(messages, stop=stop, run_manager=run_manager, **kwargs)
        finally:
            _RUN_MANAGER.reset(token)

    @staticmethod
    def _run_manager(run_manager: Any) -> Any:
        """This call's run manager (given, or left by ``_generate_with_cache``), with the cost
        pair put around its tracers before the run ends."""
        run_manager = run_manager if run_manager is not None else _RUN_MANAGER.get()
        if run_manager is not None:
            trace_cost_around_tracers(run_manager.handlers)
        return run_manager

    # -- calls ----------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        run_manager = self._run_manager(run_manager)
        result = run_sync(self._engine.arun(messages, **self._call_args(stop, kwargs)))
        self._dispatch(result, run_manager)
        return self._chat_result(result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        run_manager = self._run_manager(run_manager)
        result = await self._engine.arun(messages, **self._call_args(stop, kwargs))
        await self._adispatch(result, run_manager)
        return self._chat_result(result)

    @staticmethod
    def _final_chunk(result: RouteResult) -> ChatGenerationChunk:
        # Usage appears on this chunk only, and as integers: LangChain adds usage across
        # chunks with integer arithmetic. USD cost travels in response_metadata.
        message = AIMessageChunk(
            content="",
            usage_metadata=result.usage,
            response_metadata=dict(result.message.response_metadata),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        run_manager = self._run_manager(run_manager)
        for item in iterate_sync(self._engine.astream(messages, **self._call_args(stop, kwargs))):
            if isinstance(item, RouteResult):
                self._dispatch(item, run_manager)
                yield self._final_chunk(item)
            else:
                yield ChatGenerationChunk(message=item)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        run_manager = self._run_manager(run_manager)
        async for item in self._engine.astream(messages, **self._call_args(stop, kwargs)):
            if isinstance(item, RouteResult):
                await self._adispatch(item, run_manager)
                yield self._final_chunk(item)
            else:
                yield ChatGenerationChunk(message=item)

    # -- tools and structured output ------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; each call binds them on the chosen member with its own ``bind_tools``.

        ``tool_choice``: a tool name, "auto", "none", "any"/"required" or True (any tool).
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        if tool_choice is True:
            tool_choice = "any"
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Structured output through the members: ``function_calling`` (a forced tool
        call, the default), ``json_schema`` or ``json_mode`` (the members' ``response_format``)."""
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw)
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "json_schema":
            json_schema = convert_to_json_schema(schema)
            response_format: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema},
            }
            if strict is not None:
                response_format["json_schema"]["strict"] = strict
        elif method == "json_mode":
            response_format = {"type": "json_object"}
        else:
            raise ValueError(f"unknown method {method!r}; use function_calling, json_schema or json_mode")
        llm = self.bind(
            response_format=response_format,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
        if include_raw:
            parsed = RunnablePassthrough.assign(parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None)
            fallback = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback], exception_key="parsing_error")
        return llm | parser
