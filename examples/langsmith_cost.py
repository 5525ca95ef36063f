"""See cost per call in LangSmith, offline: the real ``langsmith`` client traces BEST-Route
calls (invoke and stream) to a local LangSmith stand-in (``tests/loopback/langsmith_capture.py``),
and the script prints what each posted run carries: tokens, USD cost, the member that answered.

    python examples/langsmith_cost.py

With a real LangSmith account, set ``LANGSMITH_TRACING=true`` and ``LANGSMITH_API_KEY`` instead:
the same fields appear on each run (usage ``total_cost``; metadata ``bestroute_member``,
``ls_model_name``).
"""

from __future__ import annotations

from typing import Any

from offline_pool import offline_chat_model


def main() -> list[dict[str, Any]]:
    from langchain_core.tracers.langchain import LangChainTracer
    from langsmith import Client

    from tests.loopback.langsmith_capture import LangSmithCapture

    llm = offline_chat_model(threshold=0.5)
    with LangSmithCapture() as langsmith:
        tracer = LangChainTracer(client=Client(api_url=langsmith.url, api_key="offline", auto_batch_tracing=False),
                                 project_name="bestroute-example")
        llm.invoke("Summarise what an LLM router does.", config={"callbacks": [tracer]})
        "".join(str(c.content) for c in llm.stream("Now stream a short answer.", config={"callbacks": [tracer]}))
        tracer.wait_for_futures()
        runs = langsmith.llm_runs()
    rows = []
    for run in runs:
        metadata = run["extra"]["metadata"]
        usage = metadata["usage_metadata"]
        rows.append({"member": metadata["bestroute_member"], "n": metadata["bestroute_n"], "input_tokens": usage["input_tokens"],
                     "output_tokens": usage["output_tokens"], "total_cost": usage["total_cost"]})
        print(f"traced run: {metadata['bestroute_member']} n={metadata['bestroute_n']}, {usage['input_tokens']} in / "
              f"{usage['output_tokens']} out tokens, ${usage['total_cost']:.6f} (ls_model_name={metadata['ls_model_name']})")
    return rows


if __name__ == "__main__":
    main()
