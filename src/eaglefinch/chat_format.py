"""The World chat format: the transcript layout the released Eagle and Finch models were tuned on.

A conversation is plain text, one turn per paragraph::

    System: You are a helpful assistant.

    User: Hi!

    Assistant: Hello. How can I help?

    User: What is RWKV?

    Assistant:

A blank line ends a turn, so a message's own blank lines are folded to single newlines (as the
official chat demos do), and the reply to a prompt ending in ``Assistant:`` stops at ``"\\n\\n"``.
The server (``eaglefinch serve``) and the chat fine-tuning data (``eaglefinch finetune``) both
render through this module, so what is trained is what is served.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eaglefinch.errors import ConfigError

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
TURN_END = "\n\n"
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


def normalise(content: str) -> str:
    """A message as it goes into the transcript: trimmed, one newline where it had blank lines."""
    return _BLANK_LINES.sub("\n", content.replace("\r\n", "\n")).strip()


def as_messages(items: Iterable[Mapping | Message]) -> list[Message]:
    """Check ``[{"role": ..., "content": ...}, ...]`` and return ``Message`` objects."""
    messages = []
    for i, item in enumerate(items):
        if isinstance(item, Message):
            messages.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"message {i} must be an object with 'role' and 'content'")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise ConfigError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ConfigError(f"message {i} ({role}) needs a 'content' string")
        messages.append(Message(role, content))
    return messages


def turn(message: Message) -> str:
    """One message as a paragraph of the transcript, ``"User: text\\n\\n"``."""
    return f"{ROLES[message.role]}: {normalise(message.content)}{TURN_END}"


def render(messages: Iterable[Mapping | Message], *, add_generation_prompt: bool = True) -> str:
    """The transcript of ``messages``, ending with ``"Assistant:"`` for the model to continue."""
    text = "".join(turn(m) for m in as_messages(messages))
    return text + f"{ROLES['assistant']}:" if add_generation_prompt else text


def segments(messages: Iterable[Mapping | Message]) -> list[tuple[str, bool]]:
    """The transcript as ``(text, is_reply)`` pieces, for training with the loss on replies only.

    Each assistant message splits into its ``"Assistant:"`` prefix (not a reply) and
    ``" text\\n\\n"`` (a reply, blank line included, so the model learns to end its turn).
    Joining the texts gives ``render(messages, add_generation_prompt=False)``.
    """
    out: list[tuple[str, bool]] = []
    for message in as_messages(messages):
        if message.role == "assistant":
            out.append((f"{ROLES['assistant']}:", False))
            out.append((f" {normalise(message.content)}{TURN_END}", True))
        else:
            out.append((turn(message), False))
    return out
