"""`eligen chat`: design a layout by conversation, refine it, render it, and edit the last image.

A plain line designs a layout (the first time) or changes the current one ("move the cat left", "make
the rose red", "add a lamp"); commands start with `/`. Every change writes a new layout file and its
preview into the session folder, so nothing is lost and `/undo` only steps back.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console

from eligen.pipeline.images import open_rgb
from eligen.pipeline.layout import Layout, LayoutError, load_layout
from eligen.pipeline.model_info import ModelLoadError
from eligen.pipeline.outputs import OutputError, check_writable, save_png

from .config import Family
from .errors import AgentError
from .layout_yaml import write_layout
from .messages import ChatBackend
from .plan import design_layout, plan_edits
from .previews import preview_image
from .render import Renderer
from .session import Session, Step

HELP = """\
Describe a scene to design a layout; then say what to change ("move the cat left", "make the rose
red", "add a lamp"). Each change writes a new layout and its preview into the session folder.

  /render [SEED]   render the current layout (the session's seed unless SEED is given)
  /edit REQUEST    change the last image: ground the request in it and repaint those regions
  /show            show the current layout
  /undo            go back one step (files stay in the folder)
  /save [PATH]     copy the current layout (PATH.yaml) or image (PATH.png) out of the session
                   [default: layout.yaml and image.png in the session folder]
  /help            this help
  /quit            end the conversation (end of input does too)"""

USER_ERRORS = (AgentError, LayoutError, OutputError, ModelLoadError)


@dataclass
class Chat:
    """One conversation over a session folder."""

    session: Session
    backend: ChatBackend
    family: Family
    renderer: Renderer
    console: Console
    show_layout: Callable[[Layout, list[str]], None]
    size: tuple[int, int] = (1024, 1024)
    defaults: dict[str, Any] = field(default_factory=dict)  # layout keys for new designs: model, steps
    failures: int = 0

    def handle(self, line: str) -> bool:
        """Act on one line of input; False when the conversation should end."""
        line = line.strip()
        if not line:
            return True
        self.session.log("user", line)
        command, _, argument = line[1:].partition(" ") if line.startswith("/") else ("", "", line)
        if command in ("quit", "exit"):
            return False
        actions: dict[str, Callable[[str], None]] = {
            "": self.change, "render": self.render, "edit": self.edit, "show": self.show, "undo": self.undo,
            "save": self.save, "help": lambda _: self.say(HELP)}
        action = actions.get(command)
        if action is None:
            self.fail(f"unknown command /{command}; /help lists them")
            return True
        try:
            action(argument.strip())
        except USER_ERRORS as exc:
            self.fail(str(exc))
        return True

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)
        self.session.log("eligen", text)

    def fail(self, text: str) -> None:
        self.failures += 1
        self.console.print(f"error: {text}", style="red", markup=False, highlight=False)
        self.session.log("eligen", f"error: {text}")

    def _write_preview(self, layout: Layout, name: str, background: Image.Image | None = None) -> None:
        path = self.session.folder / name
        save_png(preview_image(layout, self.session.folder, background), path)
        self.say(f"preview: {path}")

    def change(self, request: str) -> None:
        """Design a layout, or change the current one, from a request."""
        current = self.session.layout()
        with self.console.status("designing" if current is None else "changing the layout"):
            result = design_layout(self.backend, self.family, request, self.size, current, self.defaults)
        self.session.log("assistant", result.raw)
        name = self.session.new_name("layout", ".yaml")
        write_layout(result.layout, self.session.folder / name)
        self.show_layout(result.layout, result.notes)
        self.say(f"wrote {self.session.folder / name}")
        self._write_preview(result.layout, name.replace(".yaml", ".preview.png"))
        self.session.push(Step(name, self.session.current.image))

    def render(self, argument: str) -> None:
        """Render the current layout to a new image."""
        step = self.session.current
        layout_path = self.session.path(step.layout)
        if layout_path is None:
            raise AgentError("there is no layout to render yet: describe a scene first")
        if argument and not argument.isdigit():
            raise AgentError(f"expected /render [SEED] with SEED a whole number, got {argument!r}")
        seed = int(argument) if argument else self.session.seed
        name = self.session.new_name("image", ".png")
        with self.console.status(f"rendering {step.layout} with seed {seed}"):
            self.renderer.generate(load_layout(layout_path), self.session.folder, seed, self.session.folder / name)
        self.say(f"wrote {self.session.folder / name} (seed {seed})")
        self.session.push(Step(step.layout, name))

    def edit(self, request: str) -> None:
        """Ground the request in the last image and repaint the regions it names."""
        step = self.session.current
        image_path = self.session.path(step.image)
        if image_path is None:
            raise AgentError("there is no image to edit yet: /render one first")
        if not request:
            raise AgentError("say what to change: /edit REQUEST")
        image = open_rgb(image_path, str(image_path), "(image)")
        with self.console.status("finding what to change"):
            result = plan_edits(self.backend, self.family, request, image)
        self.session.log("assistant", result.raw)
        layout = self.session.layout()
        keep = {key: getattr(layout, key) for key in ("model", "steps", "loras")
                if layout and key in layout.model_fields_set}  # unset ones stay the model's defaults
        edits = result.layout.model_copy(update=keep)
        edits_name, image_name = self.session.new_name("edits", ".yaml"), self.session.new_name("image", ".png")
        write_layout(edits, self.session.folder / edits_name)
        self.show_layout(edits, result.notes)
        self.say(f"wrote {self.session.folder / edits_name}")
        self._write_preview(edits, edits_name.replace(".yaml", ".preview.png"), image)
        with self.console.status(f"repainting {step.image}"):
            self.renderer.inpaint(image_path, edits, self.session.folder, self.session.seed,
                                  self.session.folder / image_name)
        self.say(f"wrote {self.session.folder / image_name}")
        self.session.push(Step(step.layout, image_name, edits_name))

    def show(self, _: str) -> None:
        layout = self.session.layout()
        if layout is None:
            raise AgentError("there is no layout yet: describe a scene first")
        self.show_layout(layout, [])
        self.say(f"layout: {self.session.folder / str(self.session.current.layout)}")

    def undo(self, _: str) -> None:
        if self.session.undo() is None:
            raise AgentError("nothing to undo")
        current = self.session.current
        if current.layout is None:
            self.say("back to the start: no layout")
            return
        self.say(f"back to {current.layout}" + (f" and {current.image}" if current.image else ""))
        self.say(f"preview: {self.session.folder / current.layout.replace('.yaml', '.preview.png')}")

    def save(self, argument: str) -> None:
        """Copy the current layout or image out of the session (never over an existing file unless it is one of
        the session's own `layout.yaml` / `image.png`)."""
        current = self.session.current
        if current.layout is None:
            raise AgentError("there is nothing to save yet")
        if argument:
            target = Path(argument).expanduser()
            wanted = current.image if target.suffix.lower() == ".png" else current.layout
            if wanted is None:
                raise AgentError("there is no image to save yet: /render one first")
            check_writable([target], overwrite=False)
            pairs = [(wanted, target)]
        else:
            pairs = [(current.layout, self.session.folder / "layout.yaml")]
            pairs += [(current.image, self.session.folder / "image.png")] if current.image else []
        for name, target in pairs:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.session.folder / name, target)
            self.say(f"saved {target}")
