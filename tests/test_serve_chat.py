"""Chat messages flatten to the pipeline's question, history, system prompt and inputs without a model."""

from __future__ import annotations

import pytest

from qoqmed.serve.chat import flatten_chat
from qoqmed.serve.errors import APIError
from qoqmed.serve.schemas import ChatRequest


def _messages(*messages):
    return ChatRequest.model_validate({"messages": list(messages)}).messages


def test_turns_inputs_and_system_prompt():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    ecg = {"type": "ecg", "ecg": {"signal": [[0.0, 1.0]], "fs": 250.0}}
    chat = flatten_chat(_messages(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image, {"type": "text", "text": "\nWhat is shown?"}]},
        {"role": "assistant", "content": "\\boxed{Normal}"},
        {"role": "developer", "content": [{"type": "text", "text": "Use labels."}]},
        {"role": "user", "content": [ecg, {"type": "text", "text": "And the rhythm?"}]},
    ))
    assert chat.question == "<ecg>And the rhythm?"
    assert chat.history == [("<image>\nWhat is shown?", "\\boxed{Normal}")]
    assert chat.system == "Be brief.\nUse labels."
    assert chat.images == [("data:image/png;base64,AAAA", "messages[1].content[0].image_url.url")]
    assert [where for _, where in chat.ecgs] == ["messages[4].content[0].ecg"] and chat.volumes == []


def test_plain_question_has_no_system_prompt():
    chat = flatten_chat(_messages({"role": "user", "content": "Which findings?"}))
    assert (chat.question, chat.history, chat.system) == ("Which findings?", [], None)


@pytest.mark.parametrize("messages, param", [
    ([{"role": "assistant", "content": "hi"}], "messages"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages"),
    ([{"role": "user", "content": "a"},
      {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
      {"role": "user", "content": "b"}], "messages[1].content[0]"),
])
def test_bad_conversations_name_the_field(messages, param):
    with pytest.raises(APIError) as err:
        flatten_chat(_messages(*messages))
    assert err.value.status == 400 and err.value.param == param
