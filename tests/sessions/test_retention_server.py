"""A response that ends in a function call ranks its session above others (the agent is
running a tool), decided by the server and enforced by the engine's pin budget.

Two sessions fit the budget alone but not together. The older one ends in a forced function
call, the newer one in text: over budget, the engine demotes the newer one (lowest retention
class first), where recency alone would have picked the older.
"""

from __future__ import annotations

import openai
import pytest

from tests.runtime.server import ServerProcess
from tests.sessions.test_session_metrics import MODEL, PAGE, rows, scrape

NUM_PAGES = 64
BUDGET_FRACTION = 0.3
BUDGET_PAGES = int(NUM_PAGES * BUDGET_FRACTION)  # EngineConfig's rule
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def server(default_model_path):
    proc = ServerProcess(
        "--num-pages", str(NUM_PAGES), "--max-model-len", str(NUM_PAGES * PAGE),
        "--dtype", "float32", "--pin-budget-fraction", str(BUDGET_FRACTION),
        "--session-store", "memory://").wait_ready()
    yield proc
    proc.stop()


def test_function_call_ending_outranks_a_newer_session(server):
    client = openai.OpenAI(api_key="none", base_url=server.base_url + "/v1", max_retries=0,
                           timeout=300)

    def pages(r) -> int:
        return (r.usage.input_tokens + r.usage.output_tokens - 1) // PAGE

    tool = client.responses.create(model=MODEL, temperature=0, max_output_tokens=40,
                                   instructions="Answer with a tool call.",
                                   input=rows("w", 4) + "\nWhat is the weather in Paris?",
                                   tools=[WEATHER], tool_choice="required")
    assert [item.type for item in tool.output] == ["function_call"]
    text = client.responses.create(model=MODEL, temperature=0, max_output_tokens=4,
                                   instructions="Summarise in one line.", input=rows("t", 5))
    p_tool, p_text = pages(tool), pages(text)
    assert p_tool != p_text and max(p_tool, p_text) <= BUDGET_PAGES < p_tool + p_text
    client.chat.completions.create(model=MODEL, temperature=0, max_tokens=1,  # one more step
                                   messages=[{"role": "user", "content": "hi"}])
    m = scrape(server)
    assert m["session_demotions"] == 1
    assert m['kv_pages{state="pinned"}'] == p_tool  # the tool-waiting session kept its pin
    assert m['kv_pages{state="host_tier"}'] == p_text  # the newer, plain one was demoted
