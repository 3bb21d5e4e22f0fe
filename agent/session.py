"""A chat session folder: every layout, edits file, preview and image the conversation made, its history
(for /undo and resuming) in `session.json`, and the transcript in `transcript.jsonl`.

File names are made here from a step counter (`layout-003.yaml`, `image-004.png`); nothing the MLLM
says ever names a file. Undone steps keep their files, and numbers are never reused.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eligen.pipeline.layout import Layout, load_layout
from eligen.pipeline.outputs import OutputError, write_atomic

STATE = "session.json"
TRANSCRIPT = "transcript.jsonl"
FILE_NAME = re.compile(r"(layout|edits|image)-\d{3,}(\.preview)?\.(yaml|png)")
MAX_LOGGED_CHARS = 20_000


@dataclass(frozen=True)
class Step:
    """One state of the design: the current layout, the last image, and the edits that made it (if any)."""

    layout: str | None
    image: str | None = None
    edits: str | None = None


class Session:
    """The state of one conversation, kept in its folder."""

    def __init__(self, folder: Path, steps: list[Step], counter: int, seed: int) -> None:
        self.folder, self.steps, self.counter, self.seed = folder, steps, counter, seed

    @classmethod
    def open(cls, folder: Path) -> Session:
        """Resume the session in `folder`, or start one there (the folder must then be new or empty)."""
        state = folder / STATE
        if state.is_file():
            return cls._load(state)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise OutputError(f"{folder} exists and is not an eligen chat session (no {STATE}); "
                              "choose a new or empty folder")
        folder.mkdir(parents=True, exist_ok=True)
        session = cls(folder, [], 1, secrets.randbelow(2**32))
        session.save()
        return session

    @classmethod
    def _load(cls, state: Path) -> Session:
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
            steps = [Step(**step) for step in data["steps"]]
            counter, seed = int(data["counter"]), int(data["seed"])
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"{state} is not a readable session state ({exc})") from None
        names = [name for step in steps for name in asdict(step).values() if name is not None]
        if any(not FILE_NAME.fullmatch(name) for name in names):
            raise OutputError(f"{state} names files that eligen did not write")
        return cls(state.parent, steps, counter, seed)

    def save(self) -> None:
        data = {"version": 1, "counter": self.counter, "seed": self.seed,
                "steps": [asdict(step) for step in self.steps]}
        text = json.dumps(data, indent=1)
        write_atomic(self.folder / STATE, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @property
    def current(self) -> Step:
        return self.steps[-1] if self.steps else Step(None)

    def path(self, name: str | None) -> Path | None:
        return self.folder / name if name else None

    def layout(self) -> Layout | None:
        """The current layout, read back from its file."""
        path = self.path(self.current.layout)
        return load_layout(path) if path else None

    def new_name(self, kind: str, suffix: str) -> str:
        """A fresh file name for the next step: `{kind}-{NNN}{suffix}`."""
        return f"{kind}-{self.counter:03d}{suffix}"

    def push(self, step: Step) -> None:
        self.steps.append(step)
        self.counter += 1
        self.save()

    def undo(self) -> Step | None:
        """Drop the last step; the undone step, or None when there is none."""
        if not self.steps:
            return None
        step = self.steps.pop()
        self.save()
        return step

    def log(self, role: str, text: str, **extra: Any) -> None:
        """Append one record to the transcript."""
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "role": role,
                  "text": text[:MAX_LOGGED_CHARS], **extra}
        with (self.folder / TRANSCRIPT).open("a", encoding="utf-8") as transcript:
            transcript.write(json.dumps(record, ensure_ascii=False) + "\n")
