"""The authors' reference Qwen-Image pipeline (`diffsynth` 2.1.12) at a tiny size, with weights from diffusers.

`diffsynth.models.qwen_image_dit.QwenImageDiT.__init__` hard-codes Qwen-Image's full size (3072 wide, 60 blocks);
`TinyQwenImageDiT` builds the same attributes at a diffusers config's size from the reference's own classes and
inherits every method (`process_entity_masks`, the forward `model_fn_qwen_image` runs). Its module names are
diffusers' exactly, so diffusers weights load with `strict=True` and no converter (as the reference loads them).

The one model difference: the reference's MLP activation is `x * sigmoid(1.702 x)` (`ApproximateGELU`), diffusers'
(Qwen's own) is `gelu(x, approximate="tanh")`. `set_activation(dit, tanh=True)` gives the reference diffusers'
activation on the same `proj` weights, so everything else can be compared at float32 rounding.
"""

from __future__ import annotations

import torch
from diffsynth.models.general_modules import AdaLayerNorm, RMSNorm, TimestepEmbeddings
from diffsynth.models.qwen_image_dit import ApproximateGELU, QwenEmbedRope, QwenImageDiT, QwenImageTransformerBlock
from diffsynth.models.qwen_image_text_encoder import QwenImageTextEncoder
from diffsynth.models.qwen_image_vae import QwenImageVAE
from diffsynth.pipelines.qwen_image import QwenImagePipeline as ReferencePipeline
from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

from eligen.pipeline.shapes.tiny_qwen_image import VAE_CONFIG


class TinyQwenImageDiT(QwenImageDiT):
    """`QwenImageDiT` with the sizes of a diffusers config instead of Qwen-Image's."""

    def __init__(self, config) -> None:
        torch.nn.Module.__init__(self)
        inner = config.num_attention_heads * config.attention_head_dim
        self.pos_embed = QwenEmbedRope(theta=10000, axes_dim=list(config.axes_dims_rope), scale_rope=True)
        self.time_text_embed = TimestepEmbeddings(256, inner, diffusers_compatible_format=True, scale=1000,
                                                  align_dtype_to_timestep=False)
        self.txt_norm = RMSNorm(config.joint_attention_dim, eps=1e-6)
        self.img_in = torch.nn.Linear(config.in_channels, inner)
        self.txt_in = torch.nn.Linear(config.joint_attention_dim, inner)
        self.transformer_blocks = torch.nn.ModuleList(
            QwenImageTransformerBlock(dim=inner, num_attention_heads=config.num_attention_heads,
                                      attention_head_dim=config.attention_head_dim)
            for _ in range(config.num_layers))
        self.norm_out = AdaLayerNorm(inner, single=True)
        self.proj_out = torch.nn.Linear(inner, config.patch_size**2 * config.out_channels)

    @classmethod
    def from_diffusers(cls, transformer: QwenImageTransformer2DModel) -> TinyQwenImageDiT:
        dit = cls(transformer.config).eval()
        dit.load_state_dict(transformer.state_dict(), strict=True)
        return dit


class TanhGELU(torch.nn.Module):
    """diffusers' `GELU(approximate="tanh")` in place of the reference's `ApproximateGELU` (same `proj`)."""

    def __init__(self, proj: torch.nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.proj(x), approximate="tanh")


def set_activation(dit: QwenImageDiT, tanh: bool) -> None:
    """The reference's MLP activation: diffusers' tanh GELU, or its own `x * sigmoid(1.702 x)` (as installed)."""
    for block in dit.transformer_blocks:
        for mlp in (block.img_mlp, block.txt_mlp):
            proj = mlp.net[0].proj
            mlp.net[0] = TanhGELU(proj) if tanh else ApproximateGELU(proj.in_features, proj.out_features)
            mlp.net[0].proj = proj


def reference_pipeline(pipe: QwenImagePipeline, dit: QwenImageDiT) -> ReferencePipeline:
    """diffsynth's QwenImagePipeline on the CPU in fp32 holding the tiny components of `pipe`."""
    ref = ReferencePipeline(device="cpu", torch_dtype=torch.float32)
    encoder = QwenImageTextEncoder.__new__(QwenImageTextEncoder)  # its constructor builds the 7B model
    torch.nn.Module.__init__(encoder)
    encoder.model, encoder.config = pipe.text_encoder.model, pipe.text_encoder.config
    ref.text_encoder = encoder.eval()
    ref.tokenizer = pipe.tokenizer
    ref.dit = dit
    vae = QwenImageVAE(**VAE_CONFIG).eval()
    vae.load_state_dict(pipe.vae.state_dict(), strict=True)
    ref.vae = vae
    return ref
