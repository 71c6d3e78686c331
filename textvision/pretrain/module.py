"""``VisionPretraining``: the LightningModule of text-aligned ViT pretraining (the offline CLIP).

Trains a :class:`~textvision.vision.TimmViT` and :class:`DenseAlignmentHeads` with
:func:`dense_alignment_loss` against captions embedded by the frozen :class:`TextEncoder` (see
:mod:`textvision.pretrain.alignment` for the choice of loss and why). It never sees a question.

Validation measures **zero-shot grounding** on the held-out *questions* of the synthetic sets
(magnifier and mmvp-pairs, 12 objects): the question's sentence embedding goes through the text
head, every patch through the patch head, and the kept-target rate is how often the queried
object's patch is among the ``k`` most similar patches (``val/<set>/kept_target@k``), with no
VLM training at all — the number that says whether the features are aligned with language the way
a VLM needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from safetensors.torch import save_file

from textvision.pretrain.alignment import DenseAlignmentHeads, dense_alignment_loss, mean_pool
from textvision.pruning.selection import kept_target_rate, top_k_sorted
from textvision.text.encoder import TextEncoder
from textvision.vision.backbone import VisionBackbone

__all__ = ["VisionPretraining", "plain_patch_tokens"]

#: file names of a pretraining export (see :meth:`VisionPretraining.export`)
BACKBONE_FILE = "backbone.safetensors"
HEADS_FILE = "alignment_heads.safetensors"


def plain_patch_tokens(backbone: VisionBackbone, images: torch.Tensor) -> torch.Tensor:
    """``(B, N, Dv)`` final-normed patch tokens of ``backbone`` without any fusion (prefix dropped)."""
    x = backbone.embed(images)
    for index in range(backbone.depth):
        view = backbone.block(index)
        x = view.mlp(view.attention(x))
    return backbone.final_norm(x)[:, backbone.num_prefix_tokens :]


class VisionPretraining(LightningModule):
    """Text-aligned dense pretraining of a ViT.

    Args:
        backbone: the ViT to pretrain (e.g. ``textvision.vision.demo_vit``).
        text_encoder: the frozen sentence encoder whose space the patches align to.
        dim: width of the shared embedding space.
        lr: AdamW peak learning rate (linear warmup over ``warmup_ratio``, cosine to 0).
        weight_decay: AdamW decay on matrices.
        warmup_ratio: fraction of the steps in warmup.
        eval_k: kept-patch counts at which the zero-shot kept-target rate is reported.
    """

    def __init__(
        self,
        *,
        backbone: VisionBackbone,
        text_encoder: TextEncoder,
        dim: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_ratio: float = 0.05,
        eval_k: Sequence[int] = (1, 4, 8),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "text_encoder"])
        if text_encoder.trainable:
            raise ValueError("the text encoder stays frozen in vision pretraining (its head learns)")
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.heads = DenseAlignmentHeads(vision_width=backbone.width, text_width=text_encoder.width, dim=dim)
        self.eval_k = tuple(int(k) for k in eval_k)
        self._kept: dict[str, dict[int, list[torch.Tensor]]] = {}

    # ------------------------------------------------------------------ features
    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, N, Dv)`` final-normed patch tokens of the plain backbone (prefix tokens dropped)."""
        return plain_patch_tokens(self.backbone, images)

    def sentence_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, Dt)`` mean-pooled frozen text-encoder features (cached per text)."""
        features = self.text_encoder(list(texts))
        return mean_pool(features.hidden, features.mask)

    def similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """``(B, N)`` cosine similarity of each text with every patch of its own image."""
        patches = self.heads.embed_patches(self.patch_tokens(images))
        text = self.heads.embed_text(self.sentence_embeddings(texts).to(patches.dtype))
        return torch.einsum("bd,bnd->bn", text, patches)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        patches = self.heads.embed_patches(self.patch_tokens(batch["image"]))
        text = self.heads.embed_text(self.sentence_embeddings(batch["captions"]).to(patches.dtype))
        losses = dense_alignment_loss(self.heads, patches, text, batch["targets"], batch["caption_image"])
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"non-finite pretraining loss at step {self.global_step}")
        size = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log("train/sigmoid", losses["sigmoid"], batch_size=size)
        self.log("train/grounding", losses["grounding"], batch_size=size)
        return losses["loss"]

    # ------------------------------------------------------------------ zero-shot grounding
    def _set_name(self, dataloader_idx: int) -> str:
        names = getattr(getattr(self.trainer, "datamodule", None), "eval_set_names", None)
        return str(list(names)[dataloader_idx]) if names else f"set{dataloader_idx}"

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        scores = self.similarity(batch["image"], batch["instruction"])
        record = self._kept.setdefault(self._set_name(dataloader_idx), {k: [] for k in self.eval_k})
        for k in self.eval_k:
            kept, _ = top_k_sorted(scores, min(k, scores.shape[1]))
            record[k].append(kept_target_rate(kept, batch["target_patch"], reduce=False).cpu())

    def on_validation_epoch_end(self) -> None:
        self.zero_shot = {}
        for name, record in sorted(self._kept.items()):
            self.zero_shot[name] = {}
            for k, parts in record.items():
                hits = torch.cat(parts)
                rate = hits[hits >= 0].float().mean().item() if bool((hits >= 0).any()) else float("nan")
                self.zero_shot[name][f"kept_target@{k}"] = rate
                self.log(f"val/{name}/kept_target@{k}", rate, add_dataloader_idx=False)
        self._kept = {}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in [*self.backbone.parameters(), *self.heads.parameters()] if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(hp.warmup_ratio * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ export
    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        # the frozen text encoder reloads from its package; checkpoints hold what trains
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("text_encoder.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        missing_text = {k for k in super().state_dict() if k.startswith("text_encoder.")}
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = sorted(set(result.missing_keys) - missing_text)
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"pretraining checkpoint mismatch: missing {missing}, unexpected {result.unexpected_keys}"
            )
        return result

    def export(self, folder: str | Path) -> dict[str, Path]:
        """Write ``backbone.safetensors`` (the library model's own state dict, loadable by
        ``demo_vit(checkpoint_path=...)``) and ``alignment_heads.safetensors`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = getattr(self.backbone, "model", self.backbone)
        paths = {"backbone": folder / BACKBONE_FILE, "heads": folder / HEADS_FILE}
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, paths["backbone"]
        )
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}, paths["heads"]
        )
        return paths
