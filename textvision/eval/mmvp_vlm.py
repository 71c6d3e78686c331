"""MMVP-VLM: statement ↔ image matching for CLIP-style encoders, as the official script scores it.

Official release: HF ``MMVP/MMVP_VLM``; scoring: tsb0601/MMVP ``scripts/evaluate_vlm.py``
(Tong et al., "Eyes Wide Shut?", CVPR 2024). Layout::

    ROOT/Questions.csv                      qid, qtype, statement   (header row skipped)
    ROOT/MLLM_VLM Images/<qtype>/<qid>.jpg

Consecutive rows ``(qid1, qid2)`` are a pair; both images are read from ``qtype1``'s folder. For
each statement, text ``"a photo of " + statement`` is scored against the pair's two images and the
logits are soft-maxed over the two images; the statement picks image 1 iff ``P(image 1) > 0.5``
(a tie picks image 2); image 1 is right iff its ``qid`` is odd. A pair is correct iff both
statements pick right. The pair's category is ``CATEGORIES[pair_number // 15]`` (position in the
file, not the ``qtype`` column); per-category accuracy is correct pairs over the category's pairs,
and the MMVP-VLM average is the mean of the category accuracies.

Tolerated beyond the official reader: a third-party header (``Question ID, Type, Statement``) or
none (a first row whose first cell is an integer is data), a BOM, and the image folder spelled
``MMVP_VLM_Images`` (the HF README) with type folders spelled with ``_`` for spaces.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from textvision.data.images import ImageLoadError, load_image, to_rgb_tensor
from textvision.eval.protocol import ImageTextScorer
from textvision.eval.sources import missing_benchmark_error

__all__ = [
    "MMVP_VLM_CATEGORIES",
    "MMVP_VLM_IMAGE_DIRS",
    "MMVPVLMBenchmark",
    "MMVPVLMPair",
    "OpenCLIPScorer",
    "clip_resize_center_crop",
    "load_clip_image",
    "read_mmvp_vlm_pairs",
    "score_mmvp_vlm",
]

log = logging.getLogger(__name__)

#: Category order of the official script; 15 pairs each.
MMVP_VLM_CATEGORIES = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)

#: Image folder names: the official script's first, then the HF README's spelling.
MMVP_VLM_IMAGE_DIRS = ("MLLM_VLM Images", "MMVP_VLM_Images", "MMVP_VLM Images")

_TEXT_PREFIX = "a photo of "


@dataclass(frozen=True)
class MMVPVLMPair:
    """Two consecutive rows of the MMVP-VLM ``Questions.csv``."""

    pair_index: int
    qids: tuple[int, int]
    qtype: str
    statements: tuple[str, str]
    image_paths: tuple[Path, Path]
    category: str

    @property
    def texts(self) -> list[str]:
        """The official text inputs, ``"a photo of " + statement``."""
        return [_TEXT_PREFIX + statement for statement in self.statements]

    @property
    def gold_first(self) -> tuple[bool, bool]:
        """For each statement: is image 1 the right one (``qid`` odd)?"""
        return (self.qids[0] % 2 == 1, self.qids[1] % 2 == 1)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _type_dir(image_dir: Path, qtype: str) -> Path:
    for name in (qtype, qtype.replace(" ", "_")):
        if (image_dir / name).is_dir():
            return image_dir / name
    return image_dir / qtype


def read_mmvp_vlm_pairs(root: str | Path, *, pairs_per_category: int = 15) -> list[MMVPVLMPair]:
    """Parse the MMVP-VLM ``Questions.csv`` under ``root`` into pairs (images are not opened).

    Args:
        root: folder with ``Questions.csv`` and the image folder.
        pairs_per_category: pairs per category, 15 in the official release (smaller in tests).

    Raises:
        MissingBenchmarkError: the folder, CSV or image folder is absent.
        ValueError: a row without exactly three columns, a non-integer qid, an odd row count, or
            more pairs than the nine categories hold; the message names file and line.
    """
    root = Path(root)
    if not root.is_dir():
        raise missing_benchmark_error("mmvp_vlm", root, "no such folder")
    csv_path = root / "Questions.csv"
    if not csv_path.is_file():
        raise missing_benchmark_error("mmvp_vlm", csv_path)
    image_dir = next((root / d for d in MMVP_VLM_IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise missing_benchmark_error("mmvp_vlm", root / MMVP_VLM_IMAGE_DIRS[0], "image folder missing")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        rows = [(reader.line_num, [cell.strip().lstrip("\ufeff") for cell in row]) for row in reader]
    rows = [(line, row) for line, row in rows if any(row)]
    if rows and not _is_int(rows[0][1][0]):
        rows = rows[1:]
    parsed: list[tuple[int, int, str, str]] = []
    for line, row in rows:
        while len(row) > 3 and not row[-1]:
            row = row[:-1]
        if len(row) != 3 or not _is_int(row[0]):
            raise ValueError(f"{csv_path}, line {line}: expected 'qid, qtype, statement', got {row!r}")
        parsed.append((line, int(row[0]), row[1], row[2]))
    if len(parsed) % 2:
        raise ValueError(f"{csv_path}: {len(parsed)} statements; pairs need an even number")
    capacity = pairs_per_category * len(MMVP_VLM_CATEGORIES)
    if len(parsed) // 2 > capacity:
        raise ValueError(f"{csv_path}: {len(parsed) // 2} pairs exceed 9 categories x {pairs_per_category}")
    pairs = []
    for p in range(len(parsed) // 2):
        (_, qid1, qtype, statement1), (_, qid2, _, statement2) = parsed[2 * p], parsed[2 * p + 1]
        folder = _type_dir(image_dir, qtype)
        pairs.append(
            MMVPVLMPair(
                pair_index=p,
                qids=(qid1, qid2),
                qtype=qtype,
                statements=(statement1, statement2),
                image_paths=(folder / f"{qid1}.jpg", folder / f"{qid2}.jpg"),
                category=MMVP_VLM_CATEGORIES[p // pairs_per_category],
            )
        )
    return pairs


def clip_resize_center_crop(image: Tensor, size: int) -> Tensor:
    """CLIP's eval geometry on a tensor: shortest side to ``size`` (bicubic, antialiased), centre crop.

    ``(3, H, W)`` → ``(3, size, size)``, values kept in [0, 1].
    """
    resized = TF.resize(image, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(resized, [size, size]).clamp_(0.0, 1.0)


def load_clip_image(path: str | Path, size: int) -> Tensor:
    """Read an image the way CLIP's ``preprocess`` does before normalising: ``(3, size, size)`` in [0, 1].

    RGB files (every MMVP-VLM image) are resized and cropped as PIL images with torchvision's
    ``Resize(size, BICUBIC)`` + ``CenterCrop(size)``, the transform of the official script, so the
    pixels are identical to it. Other modes (grayscale, RGBA, 16-bit) are converted by
    :func:`textvision.data.images.load_image` first and resized as tensors.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "RGB":
                return clip_resize_center_crop(load_image(path), size)
            resized = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC)
            return to_rgb_tensor(TF.center_crop(resized, size))
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from error


class MMVPVLMBenchmark:
    """MMVP-VLM pairs with lazily loaded images.

    Args:
        root: folder with ``Questions.csv`` and ``MLLM_VLM Images/``.
        image_size: the scorer's input size; images are read by :func:`load_clip_image`.
        pairs_per_category: 15 in the official release.
        skip_missing_images: drop pairs with a missing image (logged, counted) instead of raising.
    """

    name = "mmvp_vlm"

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: int,
        pairs_per_category: int = 15,
        skip_missing_images: bool = False,
    ) -> None:
        self.root = Path(root)
        self.image_size = image_size
        self.pairs_per_category = pairs_per_category
        all_pairs = read_mmvp_vlm_pairs(root, pairs_per_category=pairs_per_category)
        missing = [str(p) for pair in all_pairs for p in pair.image_paths if not p.is_file()]
        if missing and not skip_missing_images:
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"mmvp_vlm: {len(missing)} image file(s) missing: {shown}. Each qid needs "
                "'MLLM_VLM Images/<qtype>/<qid>.jpg' (official release: MMVP/MMVP_VLM on the Hugging "
                "Face hub); pass skip_missing_images=True (--skip-missing-images) to skip those pairs."
            )
        self.skipped = missing
        self.pairs = [pair for pair in all_pairs if all(p.is_file() for p in pair.image_paths)]
        if missing:
            log.warning(
                "mmvp_vlm: %d image(s) missing, %d pair(s) skipped",
                len(missing),
                len(all_pairs) - len(self.pairs),
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[MMVPVLMPair]:
        return iter(self.pairs)

    def load_images(self, pair: MMVPVLMPair) -> Tensor:
        """``(2, 3, S, S)`` images of one pair."""
        return torch.stack([load_clip_image(p, self.image_size) for p in pair.image_paths])

    def describe(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "root": str(self.root),
            "text_template": _TEXT_PREFIX + "{statement}",
            "image_preprocessing": f"PIL Resize({self.image_size}, bicubic) + CenterCrop (CLIP preprocess)",
            "pairs": len(self.pairs),
            "pairs_per_category": self.pairs_per_category,
            "skipped_missing_images": list(self.skipped),
        }


@torch.inference_mode()
def score_mmvp_vlm(
    scorer: ImageTextScorer,
    benchmark: MMVPVLMBenchmark,
    *,
    batch_pairs: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score an image-text model on MMVP-VLM the way ``evaluate_vlm.py`` does.

    Pairs are batched: ``batch_pairs`` pairs give one ``similarity`` call on ``2·P`` images and
    ``2·P`` texts, of which each statement's two entries (its pair's images) are used.

    Returns:
        ``{"metrics": {...}, "items": [...]}``; ``metrics`` holds ``average`` (mean of the
        category accuracies, the published "MMVP-VLM" number), ``pair_acc`` over all pairs
        (``n_pairs``, ``n_pairs_correct``), ``statement_acc``, and ``by_category`` (the pair
        metrics per category), named as :mod:`textvision.eval.metrics` names them.
    """
    from tqdm.auto import tqdm

    items: list[dict[str, Any]] = []
    pairs = benchmark.pairs
    bar = tqdm(total=len(pairs), desc="mmvp_vlm", unit="pair", disable=not progress)
    for start in range(0, len(pairs), batch_pairs):
        chunk = pairs[start : start + batch_pairs]
        images = torch.cat([benchmark.load_images(pair) for pair in chunk])
        if device is not None:
            images = images.to(device)
        texts = [text for pair in chunk for text in pair.texts]
        logits = scorer.similarity(images, texts)
        if tuple(logits.shape) != (len(texts), len(texts)):
            raise ValueError(
                f"similarity returned {tuple(logits.shape)}, expected {(len(texts), len(texts))}"
            )
        logits = logits.float().cpu()
        for k, pair in enumerate(chunk):
            block = logits[2 * k : 2 * k + 2, 2 * k : 2 * k + 2]  # (image, statement)
            if not torch.isfinite(block).all():
                raise ValueError(f"mmvp_vlm pair {pair.qids}: non-finite similarity {block.tolist()}")
            p_first = block.softmax(dim=0)[0]  # per statement, over the pair's two images
            picks_first = [bool(p > 0.5) for p in p_first]
            right = [pick == gold for pick, gold in zip(picks_first, pair.gold_first, strict=True)]
            items.append(
                {
                    "pair_index": pair.pair_index,
                    "qids": list(pair.qids),
                    "qtype": pair.qtype,
                    "category": pair.category,
                    "statements": list(pair.statements),
                    "p_image1": [round(float(p), 6) for p in p_first],
                    "pred": ["img1" if pick else "img2" for pick in picks_first],
                    "gt": ["img1" if gold else "img2" for gold in pair.gold_first],
                    "statements_correct": right,
                    "correct": all(right),
                }
            )
        bar.update(len(chunk))
    bar.close()
    by_category: dict[str, dict[str, Any]] = {}
    for category in MMVP_VLM_CATEGORIES:
        members = [item for item in items if item["category"] == category]
        if members:
            correct = sum(item["correct"] for item in members)
            by_category[category] = {
                "n_pairs": len(members),
                "n_pairs_correct": correct,
                "pair_acc": correct / len(members),
            }
    statements = [ok for item in items for ok in item["statements_correct"]]
    accuracies = [entry["pair_acc"] for entry in by_category.values()]
    metrics = {
        "average": sum(accuracies) / len(accuracies) if accuracies else None,
        "n_categories": len(accuracies),
        "n_pairs": len(items),
        "n_pairs_correct": sum(item["correct"] for item in items),
        "pair_acc": sum(item["correct"] for item in items) / len(items) if items else None,
        "statement_acc": sum(statements) / len(statements) if statements else None,
        "by_category": by_category,
    }
    return {"metrics": metrics, "items": items}


class OpenCLIPScorer(nn.Module):
    """:class:`~textvision.eval.protocol.ImageTextScorer` over an open_clip model.

    ``similarity = logit_scale.exp() · cos(image, text) (+ logit_bias)``, the logits CLIP's
    ``forward`` gives (``logits_per_image``). Images arrive in [0, 1] at the model's size and are
    normalised here with the model's own mean/std (``open_clip.get_model_preprocess_cfg``).

    Args:
        model: an ``open_clip`` CLIP-style model (``encode_image``, ``encode_text``,
            ``logit_scale``).
        tokenizer: callable ``list[str] -> LongTensor (N, L)``, e.g. ``open_clip.get_tokenizer``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        import open_clip

        self.model = model
        self.tokenizer = tokenizer
        cfg = open_clip.get_model_preprocess_cfg(model)
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        size = cfg.get("size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(
        cls, model_name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu"
    ) -> OpenCLIPScorer:
        """Build through ``open_clip.create_model_and_transforms`` (a tag such as ``"openai"`` or a
        local weights file) and ``open_clip.get_tokenizer``.

        With ``pretrained="openai"`` QuickGELU is forced, so ``"ViT-L-14"`` is exactly OpenAI's CLIP
        ViT-L/14 that the official script loads (open_clip only warns about the mismatch otherwise).
        """
        import open_clip

        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, force_quick_gelu=pretrained == "openai"
        )
        return cls(model.eval(), open_clip.get_tokenizer(model_name)).to(device)

    @torch.inference_mode()
    def similarity(self, images: Tensor, texts: list[str]) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] × ``N`` texts → ``(B, N)`` logits."""
        pixels = (images.to(self.mean.device, torch.float32) - self.mean) / self.std
        image_features = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        tokens = self.tokenizer(texts).to(self.mean.device)
        text_features = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        logits = self.model.logit_scale.exp().float() * image_features @ text_features.T
        bias = getattr(self.model, "logit_bias", None)
        return logits + bias.float() if bias is not None else logits
