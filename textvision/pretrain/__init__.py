"""Text-aligned vision pretraining on synthetic scenes: the offline stand-in for CLIP."""

from textvision.pretrain.alignment import DenseAlignmentHeads, dense_alignment_loss, mean_pool
from textvision.pretrain.cache import alignment_heads_path, cache_key, pretrained_export, pretrained_vit
from textvision.pretrain.captions import CAPTION_FORMS, CaptionBank
from textvision.pretrain.data import PretrainingDataModule
from textvision.pretrain.module import VisionPretraining
from textvision.pretrain.scenes import PretrainingScenes, sample_pretraining_scenes

__all__ = [
    "CAPTION_FORMS",
    "CaptionBank",
    "DenseAlignmentHeads",
    "PretrainingDataModule",
    "PretrainingScenes",
    "VisionPretraining",
    "alignment_heads_path",
    "cache_key",
    "dense_alignment_loss",
    "mean_pool",
    "pretrained_export",
    "pretrained_vit",
    "sample_pretraining_scenes",
]
