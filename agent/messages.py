"""What a chat backend takes and gives: messages (text, optionally an image) and the answer text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from PIL import Image

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat message: text, with an image (already at its sent size) before it for user messages."""

    role: Role
    text: str
    image: Image.Image | None = None


class ChatBackend(Protocol):
    """What the planner needs from a backend: the answer text to a conversation."""

    max_pixels: int

    def complete(self, messages: Sequence[Message], schema: dict[str, Any] | None = None) -> str:
        """The model's answer; `schema` is the JSON schema the answer should follow, where the backend can ask."""
        ...
