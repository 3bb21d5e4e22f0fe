"""`eligen lora convert`: a LoRA file rewritten with the key names another tool loads. No model math here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import OverwriteOpt, fail, user_errors

lora_app = typer.Typer(help="Convert LoRA files.", no_args_is_help=True, rich_markup_mode=None)


@lora_app.command("convert")
def lora_convert(
    lora: Annotated[Path, typer.Argument(metavar="LORA", help="A FLUX LoRA .safetensors with the reference's "
                                                              "(DiffSynth's) key names, e.g. the EliGen LoRA.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="PATH", help="The converted .safetensors.")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a FLUX LoRA with the key names ComfyUI's LoRA loader maps (the tensors are unchanged).

    ComfyUI skips the reference's key names (blocks.N.attn.a_to_qkv...); kohya and diffusers files load there as
    they are. See docs/comfyui.md.

    \b
    Examples:
      eligen lora convert model_bf16.safetensors -o eligen-flux-comfyui.safetensors
    """
    from safetensors.torch import save_file

    from eligen.pipeline.families.flux.lora import load_lora_state_dict
    from eligen.pipeline.lora import LoraError
    from eligen.pipeline.lora_convert import comfyui_flux_lora
    from eligen.pipeline.outputs import check_writable, write_atomic

    with user_errors():
        if output.suffix.lower() != ".safetensors":
            raise fail(f"{output}: expected an output name ending in .safetensors", 2)
        check_writable([output], overwrite)
        try:
            converted = comfyui_flux_lora(load_lora_state_dict(lora))
        except LoraError as exc:
            raise fail(exc, 2) from None
        write_atomic(output, lambda tmp: save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp),
                                                   metadata={"format": "pt"}))
    typer.echo(f"wrote {output} ({len(converted)} tensors, ComfyUI key names)")


def register(app: typer.Typer) -> None:
    """Add `eligen lora convert` to the CLI."""
    app.add_typer(lora_app, name="lora")
