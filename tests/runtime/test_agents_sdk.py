"""``openai-agents``: a ``Runner`` loop with one function tool, run to completion against the
server through ``AsyncOpenAI(base_url=...)``, over Chat Completions and the Responses WebSocket.

Waits on constrained decoding: the first model call is forced onto the tool with ``tool_choice``.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesWSModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.runtime.conftest import API_KEY

MODEL = "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("model_class", [OpenAIChatCompletionsModel, OpenAIResponsesWSModel])
def test_runner_runs_a_forced_tool_then_answers(server, model_class):
    set_tracing_disabled(True)
    cities: list[str] = []  # every real invocation of the tool, in order

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city.

        Args:
            city: the city's name.
        """
        cities.append(city)
        return f"It is sunny and 21 C in {city}."

    async def run():
        async with openai.AsyncOpenAI(api_key=API_KEY, base_url=server.base_url + "/v1",
                                      max_retries=0, timeout=120) as client:
            model = model_class(model=MODEL, openai_client=client)
            agent = Agent(
                name="weather agent", instructions="You answer questions about the weather.",
                tools=[get_weather], model=model,
                model_settings=ModelSettings(tool_choice="get_weather", max_tokens=64,
                                             temperature=0))
            try:
                return await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
            finally:
                if hasattr(model, "close"):  # the WebSocket model holds its socket open
                    await model.close()

    result = asyncio.run(run())
    assert len(cities) >= 1 and all(isinstance(c, str) and c for c in cities)
    # The forced call came first, then (tool_choice reset to auto) the model's final answer.
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"], kinds
    assert kinds[-1] == "message_output_item", kinds
    assert isinstance(result.final_output, str) and result.final_output.strip()
