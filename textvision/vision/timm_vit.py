"""timm ``VisionTransformer`` as a :class:`~textvision.vision.backbone.VisionBackbone`.

The model is created with ``timm.create_model`` (so every timm ViT name, its pretrained weights
through timm's own hub/cache, and its architecture keyword overrides work) and kept unchanged in
``self.model``; the adapter only reads its modules. Checkpoints from a local file load through
:meth:`VisionBackbone.load_checkpoint` with a :class:`LoadReport`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention, resample_abs_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from textvision.vision.backbone import BlockView, VisionBackbone

__all__ = ["TimmBlockView", "TimmViT", "demo_vit"]


class TimmBlockView(BlockView):
    """A timm ``Block`` (``norm1, attn, ls1, drop_path1, norm2, mlp, ls2, drop_path2``)."""

    def __init__(self, block: Block) -> None:
        if not isinstance(block, Block) or not isinstance(block.attn, Attention):
            raise TypeError(
                f"expected a timm vision_transformer.Block with layers.Attention, got {type(block).__name__} "
                f"with {type(getattr(block, 'attn', None)).__name__}"
            )
        self.module = block
        self.num_heads = block.attn.num_heads
        self.head_dim = block.attn.head_dim
        self.scale = float(block.attn.scale)

    def attention_residual(self, x: torch.Tensor) -> torch.Tensor:
        b = self.module
        return b.drop_path1(b.ls1(b.attn(b.norm1(x))))

    def attention_plus(self, x: torch.Tensor, extra: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # The same operations, in the same order, as timm's Attention.forward, with the extra head
        # outputs added before the output projection.
        attn = self.module.attn
        if getattr(attn, "gate", None) is not None:
            raise NotImplementedError("timm Attention(gated=True) is not supported by attention_plus")
        q, k, v = self.qkv(self.module.norm1(x))
        if attn.fused_attn:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            o = attn.attn_drop(scores.softmax(dim=-1)) @ v
        return x + self.attention_output(o + extra(q))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        b = self.module
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))

    def norm_attn(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.norm1(x)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = self.module.attn
        batch, length, _ = h.shape
        qkv = attn.qkv(h).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def attention_output(self, o: torch.Tensor) -> torch.Tensor:
        b, attn = self.module, self.module.attn
        if getattr(attn, "gate", None) is not None:
            raise NotImplementedError(
                "timm Attention(gated=True) gates on its input; not supported by mutual fusion"
            )
        batch, heads, length, head_dim = o.shape
        o = attn.norm(o.transpose(1, 2).reshape(batch, length, heads * head_dim))
        return b.drop_path1(b.ls1(attn.proj_drop(attn.proj(o))))


class TimmViT(VisionBackbone):
    """A timm ViT (``timm.create_model``) adapted for text-aware fusion.

    Args:
        model_name: any timm ``VisionTransformer`` name, e.g. ``vit_small_patch16_224``,
            ``vit_base_patch16_clip_224.openai``.
        pretrained: load timm's pretrained weights through timm (its hub cache; offline needs a
            populated cache).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict saved from a timm model of
            the same architecture (strict, reported; a classifier head is listed as ignored).
        img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, class_token, reg_tokens,
        no_embed_class, drop_path_rate: architecture overrides passed to ``timm.create_model``
            when not None (to build small ViTs from scratch).
        image_mean, image_std: override the pixel statistics of the model's pretrained config.
    """

    def __init__(
        self,
        *,
        model_name: str = "vit_small_patch16_224",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        img_size: int | None = None,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        class_token: bool | None = None,
        reg_tokens: int | None = None,
        no_embed_class: bool | None = None,
        drop_path_rate: float = 0.0,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        overrides = {
            "img_size": img_size,
            "patch_size": patch_size,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "class_token": class_token,
            "reg_tokens": reg_tokens,
            "no_embed_class": no_embed_class,
        }
        overrides = {key: value for key, value in overrides.items() if value is not None}
        if class_token is False:
            overrides.setdefault("global_pool", "avg")
        model = timm.create_model(
            model_name, pretrained=pretrained, num_classes=0, drop_path_rate=drop_path_rate, **overrides
        )
        if not isinstance(model, VisionTransformer):
            raise TypeError(f"timm model {model_name!r} is a {type(model).__name__}, not a VisionTransformer")
        if not isinstance(model.patch_drop, nn.Identity):
            raise ValueError("patch dropout is not supported: it drops tokens the pruning bookkeeping tracks")
        self.model = model
        self.views = [TimmBlockView(block) for block in model.blocks]
        self.width = model.embed_dim
        self.num_heads = self.views[0].num_heads
        self.num_prefix_tokens = model.num_prefix_tokens
        self.has_cls_token = model.cls_token is not None
        self.patch_size = tuple(model.patch_embed.patch_size)
        self.grid_size = tuple(model.patch_embed.grid_size)
        cfg = model.pretrained_cfg or {}
        self._set_normalization(
            image_mean if image_mean is not None else cfg.get("mean", (0.485, 0.456, 0.406)),
            image_std if image_std is not None else cfg.get("std", (0.229, 0.224, 0.225)),
        )
        self.load_report = None
        # timm raises when a name has no weights, so pretrained=True means they were loaded
        self.weights_source = f"timm:{model_name}" if pretrained else None
        if checkpoint_path is not None:
            self.load_checkpoint(checkpoint_path)
            self.weights_source = str(checkpoint_path)

    def blocks(self) -> Sequence[nn.Module]:
        return self.model.blocks

    def block(self, index: int) -> TimmBlockView:
        return self.views[index]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Mirrors timm's ``patch_embed`` + ``_pos_embed`` + ``norm_pre`` (bitwise at the native size)."""
        m = self.model
        x = self.normalize(images)
        grid = self.patch_grid(images)
        pe = m.patch_embed
        if grid == self.grid_size:
            tokens = pe(x)
        else:
            tokens = pe.norm(pe.proj(x).flatten(2).transpose(1, 2))
        if tokens.ndim == 4:  # dynamic_img_size models emit NHWC
            tokens = tokens.flatten(1, 2)
        batch = tokens.shape[0]
        prefix = []
        if m.cls_token is not None:
            prefix.append(m.cls_token.expand(batch, -1, -1))
        if m.reg_token is not None:
            prefix.append(m.reg_token.expand(batch, -1, -1))
        pos = m.pos_embed
        if pos is None:
            x = torch.cat([*prefix, tokens], dim=1)
        else:
            if grid != self.grid_size:
                pos = resample_abs_pos_embed(
                    pos,
                    new_size=grid,
                    old_size=self.grid_size,
                    num_prefix_tokens=0 if m.no_embed_class else m.num_prefix_tokens,
                )
            if m.no_embed_class:
                x = tokens + pos
                x = torch.cat([*prefix, x], dim=1) if prefix else x
            else:
                x = torch.cat([*prefix, tokens], dim=1) if prefix else tokens
                x = x + pos
        return m.norm_pre(m.pos_drop(x))

    def _checkpoint_to_model_keys(
        self, state: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        own = set(self.model.state_dict())
        # A classifier checkpoint's head (and its pooling norm / attention pool when this model has
        # none) has no place in a token encoder.
        ignorable = ("head.", "head_drop.", "fc_norm.", "attn_pool.")
        ignored = [key for key in state if key not in own and key.startswith(ignorable)]
        return {key: value for key, value in state.items() if key not in ignored}, ignored

    def _resample_checkpoint_pos_embed(self, state: dict[str, torch.Tensor]) -> None:
        m = self.model
        pos = state.get("pos_embed")
        if pos is not None and m.pos_embed is not None and pos.shape != m.pos_embed.shape:
            prefix = 0 if m.no_embed_class else m.num_prefix_tokens
            state["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=self.grid_size, num_prefix_tokens=prefix
            )


def demo_vit(
    *,
    img_size: int = 64,
    patch_size: int = 8,
    embed_dim: int = 128,
    depth: int = 6,
    num_heads: int = 4,
    class_token: bool = True,
    checkpoint_path: str | None = None,
) -> TimmViT:
    """The CPU demo's small ViT trained from scratch: 64 px, 8 px patches (8x8 = 64 patches), width 128.

    Usable from YAML as ``class_path: textvision.vision.demo_vit``.
    """
    return TimmViT(
        model_name="vit_small_patch16_224",
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        class_token=class_token,
        checkpoint_path=checkpoint_path,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
    )
