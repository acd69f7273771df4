"""The offline demo provider shows what the gateway translates: tool calls, thinking and usage,
in all three dialects, streamed and not, through the official SDKs."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BASH = {"name": "Bash", "description": "Run a command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "number"},
                                                          "mode": {"enum": ["fast", "slow"]}},
                         "required": ["command", "mode"]}}
ASK = [{"role": "user", "content": "list the files"}]


@pytest.fixture(scope="module")
def demo():
    from tests.servers import ProxyThread

    import ccproxy_plugins.demo as module

    delay, module.WORD_DELAY = module.WORD_DELAY, 0.0
    with ProxyThread(yaml.safe_load((ROOT / "config.yaml").read_text())) as server:
        yield server
    module.WORD_DELAY = delay


@pytest.fixture(scope="module")
def claude(demo):
    return anthropic.Anthropic(base_url=demo.url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def gpt(demo):
    return openai.OpenAI(base_url=f"{demo.url}/v1", api_key="x", max_retries=0)


def _anthropic_round_trip(claude, model: str, stream: bool):
    def create(**kw):
        if stream:
            with claude.messages.stream(model=model, max_tokens=200, tools=[BASH], **kw) as s:
                return s.get_final_message()
        return claude.messages.create(model=model, max_tokens=200, tools=[BASH], **kw)

    first = create(messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024})
    assert first.stop_reason == "tool_use"
    kinds = [b.type for b in first.content]
    assert kinds[-1] == "tool_use" and "thinking" in kinds
    call = first.content[-1]
    assert call.name == "Bash" and call.input == {"command": "echo hello from the ccproxy demo", "mode": "fast"}
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    second = create(messages=[*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.id, "content": "README.md config.yaml"}]}])
    assert second.stop_reason == "end_turn"
    assert second.content[-1].text == "The tool returned: README.md config.yaml"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", ["demo", "demo-gpt"])
def test_anthropic_client_tool_round_trip_with_thinking(claude, model, stream):
    """``demo`` answers in Anthropic's dialect; ``demo-gpt`` in Chat's, translated."""
    _anthropic_round_trip(claude, model, stream)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", ["demo-gpt", "demo"])
def test_chat_client_tool_round_trip_with_reasoning(gpt, model, stream):
    tools = [{"type": "function", "function": {"name": BASH["name"], "parameters": BASH["input_schema"]}}]

    def create(messages):
        if not stream:
            out = gpt.chat.completions.create(model=model, messages=messages, tools=tools, reasoning_effort="low")
            return out.choices[0].finish_reason, out.choices[0].message, out.usage
        chunks = list(gpt.chat.completions.create(model=model, messages=messages, tools=tools, reasoning_effort="low",
                                                  stream=True, stream_options={"include_usage": True}))
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        message = type("M", (), {"content": text, "reasoning_content": reasoning, "tool_calls": calls and [
            type("T", (), {"id": calls[0].id, "function": type("F", (), {
                "name": calls[0].function.name,
                "arguments": "".join(t.function.arguments or "" for t in calls)})})]})
        return finish, message, chunks[-1].usage

    finish, message, usage = create(ASK)
    assert finish == "tool_calls" and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert getattr(message, "reasoning_content", None)
    call = message.tool_calls[0]
    assert call.function.name == "Bash"
    assert call.function.arguments.replace(" ", "") == '{"command":"echohellofromtheccproxydemo","mode":"fast"}'
    finish, message, _ = create([*ASK, {"role": "assistant", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "Bash", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "README.md"}])
    assert finish == "stop" and message.content == "The tool returned: README.md"


def test_demo_answers_counts(claude):
    assert claude.messages.count_tokens(model="demo", messages=ASK).input_tokens > 0


RESP_BASH = {"type": "function", "name": "Bash", "description": "Run a command",
             "parameters": BASH["input_schema"]}


@pytest.mark.parametrize("model", ["demo", "demo-gpt"])
def test_responses_clients_get_the_demo_tool_round_trip_thinking_and_usage(gpt, model):
    """The third dialect: a Responses client to either demo provider (Anthropic- and Chat-shaped), translated."""
    first = gpt.responses.create(model=model, input="list the files", tools=[RESP_BASH])
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "Bash" and {"command", "mode"} <= set(json.loads(call.arguments))
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    follow = [{"type": "function_call", "call_id": call.call_id, "name": "Bash", "arguments": call.arguments},
              {"type": "function_call_output", "call_id": call.call_id, "output": "README.md"}]
    with gpt.responses.stream(model=model, input=follow, tools=[RESP_BASH]) as stream:
        answer = stream.get_final_response()
    assert "README.md" in answer.output_text and answer.status == "completed"
    thought = gpt.responses.create(model=model, input="hi", reasoning={"effort": "low"})
    assert [item.type for item in thought.output] == ["reasoning", "message"]
    assert gpt.responses.input_tokens.count(model=model, input="hello there").input_tokens > 0
