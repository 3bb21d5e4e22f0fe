"""The image encoders FLUX IP-Adapters take: SigLIP (InstantX; its pooled output) and CLIP vision with projection
(XLabs; its projected image embedding), loaded with transformers from a local folder or a hub id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ...model_info import ModelLoadError

Kind = Literal["siglip", "clip"]


@dataclass
class ImageEncoder:
    """An image encoder and how its input is prepared."""

    kind: Kind
    model: torch.nn.Module
    image_size: int
    width: int  # the embedding's width

    def pixels(self, image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(1, 3, S, S) input of one image. SigLIP: resized to S x S (bicubic) and mapped to [-1, 1], as the reference
        (diffsynth) prepares it; CLIP: transformers' CLIPImageProcessor (shortest side S, centre crop, CLIP's mean
        and std), as diffusers' FluxPipeline does."""
        image = image.convert("RGB")
        if self.kind == "siglip":
            resized = image.resize((self.image_size, self.image_size), resample=Image.Resampling.BICUBIC)
            array = torch.from_numpy(np.array(resized, dtype=np.float32)).to(device=device, dtype=dtype)
            return (array * (2 / 255) - 1).permute(2, 0, 1)[None]
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor(size={"shortest_edge": self.image_size},
                                       crop_size={"height": self.image_size, "width": self.image_size})
        return processor(images=image, return_tensors="pt").pixel_values.to(device=device, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, image: Image.Image, device: torch.device) -> torch.Tensor:
        """The embedding (1, width) of one image, computed on `device` (the encoder goes back where it was)."""
        home = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        self.model.to(device)
        try:
            out = self.model(pixel_values=self.pixels(image, device, dtype))
        finally:
            self.model.to(home)
        return out.pooler_output if self.kind == "siglip" else out.image_embeds


def load_image_encoder(spec: str, kind: Kind, dtype: torch.dtype, base_dir: Path = Path(".")) -> ImageEncoder:
    """A SigLIP vision model or a CLIP vision model with projection from a folder (relative to `base_dir`) or a hub
    id, on the CPU in `dtype`."""
    from transformers import CLIPVisionModelWithProjection, SiglipVisionModel

    local = (base_dir / Path(spec).expanduser()).resolve()
    source = str(local) if local.is_dir() else spec
    cls = SiglipVisionModel if kind == "siglip" else CLIPVisionModelWithProjection
    try:
        model = cls.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        name = "SigLIP vision model" if kind == "siglip" else "CLIP vision model with projection"
        raise ModelLoadError(f"could not load the image encoder {spec!r} as a {name}: {exc}") from exc
    config = model.config
    width = config.hidden_size if kind == "siglip" else config.projection_dim
    return ImageEncoder(kind, model.eval(), config.image_size, width)
