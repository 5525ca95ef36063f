"""The pool: LangChain chat models with names, prices and billing behaviour."""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from bestroute_lc.policy import MemberCosts
from bestroute_lc.pricing import PRESETS, Prices, lookup_prices


class NBilling(str, enum.Enum):
    """How a provider serves and bills n samples of one prompt."""

    #: One request with ``n``; the prompt is billed once (e.g. OpenAI chat completions).
    NATIVE = "native"
    #: n concurrent requests; the prompt is billed n times (any chat model).
    PARALLEL = "parallel"


def _is_openai_chat_model(chat_model: BaseChatModel) -> bool:
    # Checked by class name so langchain-openai stays an optional dependency.
    return any(cls.__name__ == "BaseChatOpenAI" for cls in type(chat_model).__mro__)


def default_n_billing(chat_model: BaseChatModel) -> NBilling:
    """OpenAI-protocol clients take ``n`` in one request; everything else gets n requests."""
    return NBilling.NATIVE if _is_openai_chat_model(chat_model) else NBilling.PARALLEL


def model_name_of(chat_model: BaseChatModel) -> str | None:
    """The provider's model id of a LangChain chat model, where it exposes one."""
    for attr in ("model_name", "model", "model_id", "deployment_name"):
        value = getattr(chat_model, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass
class MemberHealth:
    """A member's recent failures (shared by every call that uses the member object)."""

    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cooling_down(self, now: float | None = None) -> float:
        """Seconds of cooldown left (0: usable)."""
        return max(0.0, self.cooldown_until - (time.monotonic() if now is None else now))

    def record(self, ok: bool, after: int, cooldown_s: float) -> None:
        with self._lock:
            if ok:
                self.consecutive_failures = 0
                return
            self.consecutive_failures += 1
            if self.consecutive_failures >= after:
                self.cooldown_until = time.monotonic() + cooldown_s
                self.consecutive_failures = 0


class PoolMember(BaseModel):
    """One model of the pool."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    chat_model: BaseChatModel
    prices: Prices
    #: Average output length in tokens (the paper's estimator: the training-split mean).
    avg_output_tokens: float = Field(default=256.0, gt=0)
    n_billing: NBilling = NBilling.PARALLEL
    #: Seconds before one request to this member is abandoned (then retried). When the
    #: member's client retries by itself (``client_retries``), each of its tries gets this long.
    timeout_s: float = Field(default=60.0, gt=0)
    #: Extra attempts after a failed or timed-out request.
    max_retries: int = Field(default=1, ge=0)
    #: Retries the member's own client makes inside one request (the OpenAI and Mistral SDKs:
    #: their ``max_retries``, honouring Retry-After); ``from_model`` reads it off the client.
    client_retries: int = Field(default=0, ge=0)
    #: Content block types this member accepts besides text (e.g. {"image", "image_url"}).
    extra_content_types: frozenset[str] = frozenset()
    #: Circuit breaker: after this many failed requests in a row the member is skipped (its
    #: calls fall back at once, "cooling down" in the attempts) for ``cooldown_s`` seconds.
    cooldown_after: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=30.0, ge=0)
    _health: MemberHealth = PrivateAttr(default_factory=lambda: MemberHealth())

    @property
    def health(self) -> MemberHealth:
        return self._health

    @property
    def request_deadline_s(self) -> float:
        """Seconds one request may take, its client's own retries included (so a second 429
        the SDK is waiting out is not cut short as "timed out")."""
        return self.timeout_s * (1 + self.client_retries)

    def record_request(self, ok: bool) -> None:
        """One request's outcome, for the circuit breaker (this member's current settings)."""
        self._health.record(ok, self.cooldown_after, self.cooldown_s)

    @classmethod
    def from_model(
        cls,
        chat_model: BaseChatModel,
        *,
        name: str | None = None,
        prices: Prices | str | None = None,
        provider: str | None = None,
        **kwargs: Any,
    ) -> PoolMember:
        """Build a member, filling in what can be known from the chat model.

        ``prices``: a ``Prices``; a preset name such as ``"paper-table-6"`` (looked up by
        ``name``); or None to ask genai-prices by the client's model id.
        """
        model_id = model_name_of(chat_model)
        name = name or model_id
        if not name:
            raise ValueError(f"cannot infer a name for {type(chat_model).__name__}; pass name=...")
        if isinstance(prices, str):
            preset = PRESETS.get(prices)
            if preset is None:
                raise ValueError(f"unknown price preset {prices!r}; known: {sorted(PRESETS)}")
            if name.lower() not in preset:
                raise ValueError(f"member {name!r} is not in price preset {prices!r}; known: {sorted(preset)}")
            prices = preset[name.lower()]
        elif prices is None:
            prices = lookup_prices(model_id or name, provider)
        kwargs.setdefault("n_billing", default_n_billing(chat_model))
        # One owner of retries: a client that retries by itself (the OpenAI and Mistral SDKs do,
        # honouring Retry-After) keeps doing so and the member adds none, so retries never multiply
        # (2 SDK retries x 2 member attempts x n samples made 24 requests of one failing call).
        client_retries = getattr(chat_model, "max_retries", None)
        if isinstance(client_retries, int) and client_retries > 0:
            if kwargs.get("max_retries", 0) > 0:
                raise ValueError(
                    f"member {name!r}: its client retries {client_retries} time(s) itself and max_retries="
                    f"{kwargs['max_retries']} would multiply them; let one of the two retry (max_retries=0 here, "
                    "or max_retries=0 on the client)"
                )
            kwargs["max_retries"] = 0
            kwargs["client_retries"] = client_retries
        return cls(name=name, chat_model=chat_model, prices=prices, **kwargs)

    @property
    def costs(self) -> MemberCosts:
        return MemberCosts(
            input_per_mtok=self.prices.input_per_mtok,
            output_per_mtok=self.prices.output_per_mtok,
            avg_output_tokens=self.avg_output_tokens,
            prompt_billed_per_sample=self.n_billing is NBilling.PARALLEL,
        )

    @property
    def accepts_content_types(self) -> frozenset[str]:
        return frozenset({"text"}) | self.extra_content_types


def common_profile(pool: Pool) -> dict[str, Any] | None:
    """The members' common ground as a LangChain model profile: the smallest context and
    output limits, and a capability only where every member's profile states it (any member
    may answer a call; unstated counts as absent). None when a member has no profile."""
    profiles = [getattr(m.chat_model, "profile", None) for m in pool]
    if not profiles or any(not isinstance(p, dict) for p in profiles):
        return None
    out: dict[str, Any] = {"name": f"bestroute({', '.join(pool.names)})"}
    for key in ("max_input_tokens", "max_output_tokens"):
        values = [p[key] for p in profiles if isinstance(p.get(key), int)]
        if len(values) == len(profiles):
            out[key] = min(values)
    flags = {key for p in profiles for key, value in p.items() if isinstance(value, bool) and key != "open_weights"}
    for key in sorted(flags):
        out[key] = all(p.get(key) is True for p in profiles)
    return out


class Pool(BaseModel):
    """Pool members and which one is the reference.

    Every non-reference member needs a router head; heads are matched by name.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    members: list[PoolMember]
    reference: str

    @field_validator("members")
    @classmethod
    def _unique_names(cls, members: list[PoolMember]) -> list[PoolMember]:
        if len(members) < 2:
            raise ValueError("a pool needs a reference and at least one other member")
        names = [m.name for m in members]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate pool member names: {duplicates}")
        return members

    def model_post_init(self, __context: Any) -> None:
        if self.reference not in self.names:
            raise ValueError(f"reference {self.reference!r} is not a pool member; members: {self.names}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def routed_names(self) -> list[str]:
        """Non-reference members, in the order given (the router maps its heads by name)."""
        return [m.name for m in self.members if m.name != self.reference]

    def __getitem__(self, name: str) -> PoolMember:
        for member in self.members:
            if member.name == name:
                return member
        raise ValueError(f"unknown pool member {name!r}; members: {self.names}")

    def __iter__(self):  # type: ignore[override]
        return iter(self.members)

    def costs(self) -> dict[str, MemberCosts]:
        return {m.name: m.costs for m in self.members}

    def with_avg_output_tokens(self, lengths: Mapping[str, float]) -> Pool:
        """A copy whose members use ``lengths`` (e.g. from a trained artifact) where given."""
        members = [
            m.model_copy(update={"avg_output_tokens": float(lengths[m.name])}) if m.name in lengths else m
            for m in self.members
        ]
        return Pool(members=members, reference=self.reference)


def check_pool_matches(expected_routed: Sequence[str], expected_reference: str, pool: Pool, what: str) -> None:
    """Raise ``ValueError`` naming the difference if ``pool`` is not the one ``what`` was trained for."""
    problems: list[str] = []
    if pool.reference != expected_reference:
        problems.append(f"reference is {pool.reference!r} but {what} was trained with {expected_reference!r}")
    actual = pool.routed_names
    missing = [n for n in expected_routed if n not in actual]
    extra = [n for n in actual if n not in expected_routed]
    if missing:
        problems.append(f"pool lacks member(s) {missing}")
    if extra:
        problems.append(f"pool has member(s) {extra} that {what} has no heads for")
    if problems:
        raise ValueError(f"{what} does not match this pool: " + "; ".join(problems))

