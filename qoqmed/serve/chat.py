"""OpenAI chat messages -> what the pipeline takes: the last user turn, earlier (user, assistant) pairs, a system
prompt, and the inputs of every user turn in order, each turn's text marked with placeholders where its inputs
were. A pure function of the request, so it is tested without a model or a server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import APIError
from .schemas import MAX_CHAT_CHARS, ChatMessage, ECGContent, ECGPart, ImagePart, TextPart, VolumePart


@dataclass
class FlatChat:
    """A conversation flattened for the pipeline; each input is paired with where it sat in the request."""

    question: str
    history: list[tuple[str, str]]
    system: str | None
    images: list[tuple[str, str]] = field(default_factory=list)          # (data URL, request path)
    volumes: list[tuple[VolumePart, str]] = field(default_factory=list)
    ecgs: list[tuple[ECGPart, str]] = field(default_factory=list)


def flatten_chat(messages: Sequence[ChatMessage]) -> FlatChat:
    """Flatten ``messages``; APIError (400) when turns do not alternate user/assistant from a user turn to a user
    turn, a system or assistant turn holds anything but text, or the text of all turns passes MAX_CHAT_CHARS
    (checked here, before any tokenization)."""
    total = sum(len(m.content) if isinstance(m.content, str) else
                sum(len(p.text) for p in m.content if isinstance(p, TextPart)) for m in messages)
    if total > MAX_CHAT_CHARS:
        raise APIError(400, f"the messages hold {total:,} characters of text; this server takes at most "
                            f"{MAX_CHAT_CHARS:,} per request", "messages", code="too_long")
    system = [m for m in messages if m.role in ("system", "developer")]
    for i, msg in enumerate(messages):
        if msg.role in ("system", "developer") and not isinstance(msg.content, str):
            for k, part in enumerate(msg.content):
                if not isinstance(part, TextPart):
                    raise APIError(400, f"a {msg.role} message may hold text only; send images, ECGs and volumes "
                                        "in a user message", f"messages[{i}].content[{k}]")
    turns = [(i, m) for i, m in enumerate(messages) if m.role in ("user", "assistant")]
    roles = [m.role for _, m in turns]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise APIError(400, "messages must alternate user and assistant turns, from a user turn to a user turn",
                       "messages")
    texts: list[str] = []  # user and assistant turns in order, inputs marked by placeholders
    images: list[tuple[str, str]] = []
    volumes: list[tuple[VolumePart, str]] = []
    ecgs: list[tuple[ECGPart, str]] = []
    for i, msg in turns:
        parts = [TextPart(type="text", text=msg.content)] if isinstance(msg.content, str) else msg.content
        text = []
        for k, part in enumerate(parts):
            where = f"messages[{i}].content[{k}]"
            if isinstance(part, TextPart):
                text.append(part.text)
            elif msg.role == "assistant":
                raise APIError(400, "an assistant turn may hold text only", where)
            elif isinstance(part, ImagePart):
                text.append("<image>")
                images.append((part.image_url.url, f"{where}.image_url.url"))
            elif isinstance(part, ECGContent):
                text.append("<ecg>")
                ecgs.append((part.ecg, f"{where}.ecg"))
            else:
                text.append("<volume>")
                volumes.append((part.volume, f"{where}.volume"))
        texts.append("".join(text))
    # A client's system prompt replaces the default for this request only.
    system_text = "\n".join(m.content if isinstance(m.content, str) else
                            " ".join(p.text for p in m.content if isinstance(p, TextPart)) for m in system)
    return FlatChat(question=texts[-1], history=list(zip(texts[:-1:2], texts[1:-1:2])), system=system_text or None,
                    images=images, volumes=volumes, ecgs=ecgs)
