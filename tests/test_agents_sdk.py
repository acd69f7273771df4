"""The OpenAI Agents SDK (``openai-agents``, Responses API by default) running a tool-using agent through the
gateway against a Claude-dialect upstream (the mock)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.mock_upstream.content import DEFAULT_TEXT, SHELL_OUTPUT

agents = pytest.importorskip("agents")


def test_tool_using_agent_against_a_claude_upstream(proxy: Any, upstream: Any) -> None:
    ran: list[str] = []

    @agents.function_tool
    def exec_command(cmd: str) -> str:
        """Run a shell command and return its output."""
        ran.append(cmd)
        return SHELL_OUTPUT

    async def run() -> Any:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0,
                                    default_headers={"x-mock-content": "shell"})
        model = agents.OpenAIResponsesModel(model="claude-sonnet-4-5", openai_client=client)
        agent = agents.Agent(name="ops", instructions="Use the shell.", model=model, tools=[exec_command])
        try:
            return await agents.Runner.run(agent, "What does echo print?", max_turns=4,
                                           run_config=agents.RunConfig(tracing_disabled=True))
        finally:
            await client.close()

    result = asyncio.run(run())
    assert result.final_output == DEFAULT_TEXT and ran == [f"echo {SHELL_OUTPUT}"]
    call, answer = upstream.requests  # Anthropic Messages requests: the call, then the tool's result
    assert call.path == answer.path == "/v1/messages"
    assert answer.json()["messages"][-1]["content"][0] == {
        "type": "tool_result", "tool_use_id": "toolu_01C55s83sh12ll90ok77zz1", "content": SHELL_OUTPUT}
