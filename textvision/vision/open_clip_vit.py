"""open_clip ``VisionTransformer`` (the image tower of a CLIP model) as a :class:`VisionBackbone`.

The CLIP model is created with ``open_clip.create_model`` (built-in names with a pretrained tag or
file, ``local-dir:/path`` folders holding ``open_clip_config.json`` + weights, ``hf-hub:`` ids)
and only its ``visual`` tower is kept, unchanged, in ``self.model``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import parse_model_name
from open_clip.transformer import ResidualAttentionBlock
from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from timm.layers import resample_abs_pos_embed
from torch import nn

from textvision.vision.backbone import BlockView, VisionBackbone

__all__ = ["OpenClipBlockView", "OpenClipViT", "library_weights_source"]


def library_weights_source(model_name: str, pretrained: str | None) -> str | None:
    """Where ``open_clip.create_model(model_name, pretrained=pretrained)`` takes the CLIP weights
    from, or ``None`` for a random init.

    ``hf-hub:`` ids carry their weights; a ``local-dir:`` folder does when it holds a
    ``.safetensors``/``.bin``/``.pth`` file (the files open_clip's loader looks for, which then
    ignores ``pretrained``); a plain name takes them from ``pretrained`` (a tag or a file).
    """
    schema, identifier = parse_model_name(model_name)
    if schema == "hf-hub":
        return model_name
    if schema == "local-dir":
        folder = Path(identifier)
        found = any(next(folder.glob(pattern), None) for pattern in ("*.safetensors", "*.bin", "*.pth"))
        return model_name if found else None
    return None if pretrained is None else f"open_clip:{model_name}/{pretrained}"


class OpenClipBlockView(BlockView):
    """An open_clip ``ResidualAttentionBlock`` (``ln_1, attn: MultiheadAttention, ls_1, ln_2, mlp, ls_2``)."""

    def __init__(self, block: ResidualAttentionBlock) -> None:
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
            raise TypeError(
                f"expected an open_clip ResidualAttentionBlock, got {type(block).__name__} "
                "(CustomResidualAttentionBlock / scaled-cosine variants are not supported)"
            )
        if not block.attn.batch_first or not block.attn._qkv_same_embed_dim:
            raise TypeError("open_clip block must use batch_first attention with a packed in_proj")
        self.module = block
        self.num_heads = block.attn.num_heads
        self.head_dim = block.attn.head_dim
        self.scale = self.head_dim**-0.5

    def attention_residual(self, x: torch.Tensor) -> torch.Tensor:
        b = self.module
        return b.ls_1(b.attention(q_x=b.ln_1(x)))

    def attention_plus(self, x: torch.Tensor, extra: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # nn.MultiheadAttention is a closed kernel (with a fused fast path), so the self-attention
        # branch runs as the library runs it and the extra heads are projected separately by the
        # same out_proj weight, without its bias (already in the self-attention branch):
        # proj(o_self + e) = proj(o_self) + W_o·e.
        b, attn = self.module, self.module.attn
        h = b.ln_1(x)
        out = x + b.ls_1(b.attention(q_x=h))
        batch, length, dim = x.shape
        q = F.linear(
            h, attn.in_proj_weight[:dim], None if attn.in_proj_bias is None else attn.in_proj_bias[:dim]
        )
        q = q.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        e = extra(q).transpose(1, 2).reshape(batch, length, dim)
        return out + b.ls_1(F.linear(e, attn.out_proj.weight))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        b = self.module
        return x + b.ls_2(b.mlp(b.ln_2(x)))

    def norm_attn(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.ln_1(x)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = self.module.attn
        batch, length, _ = h.shape
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        qkv = qkv.reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v

    def attention_output(self, o: torch.Tensor) -> torch.Tensor:
        attn = self.module.attn
        batch, heads, length, head_dim = o.shape
        o = o.transpose(1, 2).reshape(batch, length, heads * head_dim)
        return self.module.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))


class OpenClipViT(VisionBackbone):
    """The image tower of an open_clip CLIP model, adapted for text-aware fusion.

    Args:
        model_name: an open_clip model name (``ViT-B-16``, ``ViT-L-14-336``), or
            ``local-dir:/path`` (a folder with ``open_clip_config.json`` and weights).
        pretrained: open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``) or a CLIP
            checkpoint file, loaded by open_clip.
        checkpoint_path: a local state dict of a CLIP model (``visual.*`` keys; the text tower is
            listed as ignored) or of the visual tower alone; strict and reported.
        image_size: force another input size at creation (``force_image_size``).
        image_mean, image_std: override the pixel statistics of the model's preprocess config.
    """

    def __init__(
        self,
        *,
        model_name: str = "ViT-B-16",
        pretrained: str | None = None,
        checkpoint_path: str | None = None,
        image_size: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        source = library_weights_source(model_name, pretrained)
        clip = open_clip.create_model(
            model_name,
            pretrained=pretrained,
            force_image_size=image_size,
            pretrained_text=False,
            # where weights are expected, their absence is an error, not open_clip's logged
            # fallback to a random init (which would then be taken for reloadable weights)
            require_pretrained=source is not None,
        )
        visual = clip.visual
        if not isinstance(visual, OpenClipVisionTransformer):
            raise TypeError(
                f"open_clip model {model_name!r} has a {type(visual).__name__} image tower, not a ViT"
            )
        if not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError("patch dropout is not supported: it drops tokens the pruning bookkeeping tracks")
        if not visual.transformer.batch_first:
            raise TypeError("open_clip VisionTransformer must run batch_first")
        preprocess = open_clip.get_model_preprocess_cfg(clip)
        del clip  # keep only the image tower
        self.model = visual
        self.views = [OpenClipBlockView(block) for block in visual.transformer.resblocks]
        self.width = visual.transformer.width
        self.num_heads = self.views[0].num_heads
        self.num_prefix_tokens = 1
        self.has_cls_token = True
        self.patch_size = tuple(visual.patch_size)
        self.grid_size = tuple(visual.grid_size)
        self._set_normalization(
            image_mean if image_mean is not None else preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN),
            image_std if image_std is not None else preprocess.get("std", open_clip.OPENAI_DATASET_STD),
        )
        self.load_report = None
        self.weights_source = source
        if checkpoint_path is not None:
            self.load_checkpoint(checkpoint_path)
            self.weights_source = str(checkpoint_path)

    def blocks(self) -> Sequence[nn.Module]:
        return self.model.transformer.resblocks

    def block(self, index: int) -> OpenClipBlockView:
        return self.views[index]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.ln_post(x)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Mirrors open_clip's ``VisionTransformer._embeds`` (bitwise at the native size)."""
        m = self.model
        x = self.normalize(images)
        grid = self.patch_grid(images)
        x = m.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = m.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        pos = m.positional_embedding
        if grid != self.grid_size:
            pos = resample_abs_pos_embed(pos.unsqueeze(0), new_size=grid, old_size=self.grid_size)[0]
        x = x + pos.to(x.dtype)
        return m.ln_pre(x)

    def _checkpoint_to_model_keys(
        self, state: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        if any(key.startswith("visual.") for key in state):
            ignored = [key for key in state if not key.startswith("visual.")]
            return {
                key[len("visual.") :]: value for key, value in state.items() if key.startswith("visual.")
            }, ignored
        return dict(state), []

    def _resample_checkpoint_pos_embed(self, state: dict[str, torch.Tensor]) -> None:
        pos = state.get("positional_embedding")
        own = self.model.positional_embedding
        if pos is not None and pos.shape != own.shape:
            state["positional_embedding"] = resample_abs_pos_embed(pos.unsqueeze(0), new_size=self.grid_size)[
                0
            ]
