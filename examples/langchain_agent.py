"""A LangChain agent with tools on BEST-Route, offline: each model call of the agent is routed,
and the decision and cost of each reach the callbacks while the agent streams.

    python examples/langchain_agent.py
"""

from __future__ import annotations

from typing import Any

from offline_pool import offline_chat_model


def main() -> dict[str, Any]:
    from langchain.agents import create_agent
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.tools import tool

    from bestroute_lc.tracing import get_bestroute_cost_callback

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"It is sunny and 21 C in {city}."

    class PrintDecisions(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == "bestroute_decision":
                print(f"  model call -> {data['member']} n={data['n']} ({data['reason']}), ${data['actual_cost_usd']:.6f}")

    agent = create_agent(offline_chat_model(threshold=0.5), tools=[get_weather])
    with get_bestroute_cost_callback() as cost:
        tokens = []
        for chunk, _metadata in agent.stream({"messages": [("user", "What is the weather in Paris?")]},
                                              stream_mode="messages", config={"callbacks": [PrintDecisions()]}):
            if chunk.content and chunk.type == "AIMessageChunk":
                tokens.append(str(chunk.content))
    print("agent said:", "".join(tokens)[:200])
    print(f"total: {cost.calls} model calls, ${cost.total_cost_usd:.6f}; by member: "
          + ", ".join(f"{m} {t.calls} (${t.cost_usd:.6f})" for m, t in cost.by_member.items()))
    return {"calls": cost.calls, "cost_usd": cost.total_cost_usd, "text": "".join(tokens)}


if __name__ == "__main__":
    main()
