"""The LightningModule: single-stage VLM training, option-scoring evaluation, lean checkpoints.

One stage as in Prismatic (Karamcheti et al., 2024): every trainable group (projector, fusion,
text adapter, LM or its LoRA/DoRA adapters, optionally the backbone) trains together from step
0, each with its own learning rate; AdamW with linear warmup and cosine decay.

Evaluation scores every option by the LM's log-likelihood and goes through the eval package's
own two steps, as ``textvision eval`` does: :func:`textvision.eval.evaluator.option_records`
(scores → predictions; NaN/inf scores count wrong, never as an answer) and
:func:`textvision.eval.metrics.summarize` (accuracy, MMVP pair accuracy over complete pairs,
chance levels, per category), so the module logs, the demo's ``metrics.json`` and the evaluator
share one definition and one set of names. Per evaluation set it logs
``<stage>/<set>/<metric>`` (``loss``, ``acc``, ``chance_acc``, ``pair_acc``, ``chance_pair_acc``,
``invalid``, ``kept_target``, ``exact_match``), ``<stage>/<set>/<category>/acc``, and
``<stage>/acc``, the mean accuracy over sets.

Checkpoints hold trainable weights only: frozen weights that construction reloads from their
pretrained source (``TextAwareVLM.reloadable_frozen_names``) are dropped from ``state_dict`` and
checked on load. Hyperparameters are the plain config dict LightningCLI records, so
``torch.load(ckpt, weights_only=True)`` works and ``load_from_checkpoint`` rebuilds the model.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from textvision.eval.evaluator import choose_options, option_records
from textvision.eval.metrics import summarize
from textvision.pruning.selection import grounding_loss, kept_target_rate
from textvision.vlm.model import TextAwareVLM

__all__ = ["TextVisionModule"]

_STAGES = ("val", "test")


class TextVisionModule(LightningModule):
    """Trains a :class:`TextAwareVLM` on answer tokens; evaluates by option scoring.

    Args:
        vlm: the model (a ``class_path``/``init_args`` block in YAML).
        lr: base learning rate, used by every group without its own.
        lr_projector, lr_fusion, lr_text_adapter, lr_backbone, lr_text_encoder, lr_language_model:
            per-group learning rates (``None`` = ``lr``); the names are the groups of
            ``TextAwareVLM.parameter_groups()``.
        weight_decay: AdamW decay on matrices (biases, norms, gates and other 1-D tensors get none).
        beta1, beta2, eps: AdamW.
        warmup_ratio: fraction of the total optimizer steps spent in linear warmup.
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        delay_steps: group name → optimizer steps during which that group's learning rate is 0; it
            then warms up linearly (over the same number of steps as ``warmup_ratio`` gives, at
            least one) and joins the shared cosine. Use it to hold a from-scratch encoder still
            until the LM has learned to read its features: trained jointly from step 0 at the LM's
            rate, the encoder's features drift faster than the LM learns to read them (measured on
            the demo, see the README), the problem a separate alignment stage solves in LLaVA; this
            keeps the run single-stage. (Lightning's ``BackboneFinetuning`` callback does the same
            per epoch; the synthetic data has no epochs.)
        lr_scorer: learning rate of the encoder's ``text_similarity`` scorer (``None`` = ``lr``).
        grounding_weight: weight of the grounding loss (:func:`textvision.pruning.grounding_loss`:
            cross-entropy of the encoder's selection at the queried object's patch, from the
            synthetic sets' ``target_patch``) added to the answer loss; 0 (the default, and for
            real data, which names no patch) turns it off. It trains the selection only where the
            scorer is differentiable (``scorer: text_similarity``).
        eval_generate: also generate greedy answers in validation/test and report exact-match.
        max_new_tokens: generation length for ``eval_generate`` and ``predict``.
    """

    def __init__(
        self,
        vlm: TextAwareVLM,
        *,
        lr: float = 2e-4,
        lr_projector: float | None = None,
        lr_fusion: float | None = None,
        lr_text_adapter: float | None = None,
        lr_backbone: float | None = None,
        lr_text_encoder: float | None = None,
        lr_language_model: float | None = None,
        lr_scorer: float | None = None,
        grounding_weight: float = 0.0,
        weight_decay: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0,
        delay_steps: dict[str, int] | None = None,
        eval_generate: bool = False,
        max_new_tokens: int = 16,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("vlm"), nn.Module):
            # Built in Python rather than from a LightningCLI config: a module is no plain
            # hyperparameter (it would break weights_only loading); pass `vlm=` to load_from_checkpoint.
            self.save_hyperparameters(ignore=["vlm"])
        self.vlm = vlm
        self.group_lr = {
            "projector": lr_projector,
            "fusion": lr_fusion,
            "text_adapter": lr_text_adapter,
            "backbone": lr_backbone,
            "text_encoder": lr_text_encoder,
            "language_model": lr_language_model,
            "scorer": lr_scorer,
        }
        if grounding_weight < 0:
            raise ValueError(f"grounding_weight must be >= 0, got {grounding_weight}")
        self.delay_steps = dict(delay_steps or {})
        bad = {k: v for k, v in self.delay_steps.items() if int(v) < 0}
        if bad:
            raise ValueError(f"delay_steps must be >= 0, got {bad}")
        # Checkpoints leave out frozen pretrained weights, so loading is non-strict; on_load_checkpoint
        # checks that exactly those (and nothing else) are missing.
        self.strict_loading = False
        # "<stage>/<set>" -> "items" (option_records' records), "kept_target", "exact_match"
        self._records: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
        self.eval_results: dict[str, dict[str, dict[str, float]]] = {}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        visual, out = self.vlm.encode(batch["image"], batch["instruction"])
        loss = self.vlm.language_model.loss(visual, batch["prompt"], batch["answer"], batch["options"])
        size = len(batch["answer"])
        if self.hparams.grounding_weight:
            grounding = grounding_loss(out.selection_logits, batch["target_patch"])
            self.log("train/answer_loss", loss, batch_size=size)
            self.log("train/grounding_loss", grounding, batch_size=size)
            loss = loss + self.hparams.grounding_weight * grounding
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _set_name(self, stage: str, dataloader_idx: int) -> str:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for attr in (f"{stage}_set_names", "eval_set_names"):
            names = getattr(datamodule, attr, None)
            if names:
                return str(list(names)[dataloader_idx])
        return f"set{dataloader_idx}"

    def _eval_step(self, batch: dict[str, Any], stage: str, dataloader_idx: int) -> dict[str, Tensor]:
        name = self._set_name(stage, dataloader_idx)
        visual, encoded = self.vlm.encode(batch["image"], batch["instruction"])
        lm = self.vlm.language_model
        size = len(batch["answer"])
        loss = lm.loss(visual, batch["prompt"], batch["answer"])
        self.log(f"{stage}/{name}/loss", loss, batch_size=size, add_dataloader_idx=False, sync_dist=True)
        out: dict[str, Tensor] = {"loss": loss}
        rec = self._records[f"{stage}/{name}"]
        if any(batch["options"]):
            scores = lm.score(
                visual, batch["prompt"], batch["options"], length_normalize=self.vlm.length_normalize
            )
            rec["items"].extend(option_records(scores, batch))
        if "target_patch" in batch:
            kept = getattr(encoded, "kept_indices", None)
            rec["kept_target"].extend(kept_target_rate(kept, batch["target_patch"], reduce=False).tolist())
        if self.hparams.eval_generate:
            replies = lm.generate(visual, batch["prompt"], max_new_tokens=self.hparams.max_new_tokens)
            rec["exact_match"].extend(
                r.strip().lower() == a.strip().lower() for r, a in zip(replies, batch["answer"], strict=True)
            )
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step(batch, "test", dataloader_idx)

    def _gather(self, values: list[Any]) -> list[Any]:
        """Every rank's ``values`` concatenated (the evaluation loaders split items over ranks)."""
        if self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return list(values)
        parts: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(parts, list(values))
        return [value for part in parts for value in part]

    def _eval_epoch_end(self, stage: str) -> None:
        results: dict[str, dict[str, Any]] = {}
        for key in sorted(k for k in self._records if k.startswith(f"{stage}/")):
            rec = self._records[key]
            name = key.split("/", 1)[1]
            items = self._gather(rec["items"])
            metrics = summarize(items)
            if metrics.get("n_invalid"):
                rank_zero_warn(
                    f"{stage}/{name}: {metrics['n_invalid']} of {len(items)} items had NaN/inf "
                    "option scores; they are counted as wrong (metric 'invalid')"
                )
            exact = self._gather(rec["exact_match"])
            if exact:
                metrics["exact_match"] = sum(exact) / len(exact)
            hits = [hit for hit in self._gather(rec["kept_target"]) if hit >= 0]
            if hits:
                # how often the queried object's patch survived pruning, over items that name it
                metrics["kept_target"] = sum(hits) / len(hits)
            results[name] = metrics
            for metric, value in metrics.items():
                if metric == "by_category":
                    for category, cat_metrics in value.items():
                        if cat_metrics["acc"] is not None:
                            self.log(
                                f"{stage}/{name}/{category}/acc",
                                cat_metrics["acc"],
                                add_dataloader_idx=False,
                                rank_zero_only=True,
                            )
                elif value is not None and metric != "n" and not metric.startswith("n_"):
                    self.log(f"{stage}/{name}/{metric}", value, add_dataloader_idx=False, rank_zero_only=True)
        accs = [m["acc"] for m in results.values() if m.get("acc") is not None]
        if accs:
            # One number for checkpoint selection: the mean accuracy over evaluation sets.
            self.log(f"{stage}/acc", sum(accs) / len(accs), prog_bar=True, rank_zero_only=True)
        self.eval_results[stage] = results
        for key in [k for k in self._records if k.startswith(f"{stage}/")]:
            del self._records[key]

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        visual, _ = self.vlm.encode(batch["image"], batch["instruction"])
        lm = self.vlm.language_model
        replies = lm.generate(visual, batch["prompt"], max_new_tokens=self.hparams.max_new_tokens)
        preds: list[int | None] = [None] * len(replies)
        if any(batch["options"]):
            scores = lm.score(visual, batch["prompt"], batch["options"])
            preds = choose_options(scores, [len(o) for o in batch["options"]]).tolist()
        ids = batch.get("id", [str(i) for i in range(len(replies))])
        return [
            {"id": i, "reply": r, "option": (opts[p] if opts and p is not None and p >= 0 else None)}
            for i, r, p, opts in zip(ids, replies, preds, batch["options"], strict=True)
        ]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        param_groups = []
        group_of = []  # the VLM group each optimizer group belongs to (decay and no-decay halves)
        for name, params in self.vlm.parameter_groups().items():
            lr = hp.lr if self.group_lr.get(name) is None else self.group_lr[name]
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            for group_params, wd, suffix in ((decay, hp.weight_decay, ""), (no_decay, 0.0, "/no_decay")):
                if group_params:
                    param_groups.append(
                        {"params": group_params, "lr": lr, "weight_decay": wd, "name": name + suffix}
                    )
                    group_of.append(name)
        if not param_groups:
            raise ValueError("nothing to train: every parameter group is frozen")
        names = set(group_of)
        unknown = sorted(set(self.delay_steps) - names)
        if unknown:
            raise ValueError(
                f"delay_steps names unknown or frozen groups {unknown}; trainable groups are {sorted(names)}"
            )
        optimizer = torch.optim.AdamW(param_groups, betas=(hp.beta1, hp.beta2), eps=hp.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_ratio * total)
        min_ratio = hp.min_lr_ratio

        def warmup_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

        def delayed(delay: int):
            ramp = max(1, warmup)

            def factor(step: int) -> float:
                if step < delay:
                    return 0.0
                return min(warmup_cosine(step), (step - delay + 1) / (ramp + 1))

            return factor

        lambdas = [
            delayed(int(self.delay_steps[name])) if self.delay_steps.get(name) else warmup_cosine
            for name in group_of
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):  # type: ignore[override]
        """Lightning's loader, without its warning about the deliberately absent frozen weights
        (:meth:`on_load_checkpoint` checks that exactly those are absent, and fails otherwise)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not")
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def load_weights(self, checkpoint_path: str | Path) -> None:
        """Load the weights of a Lightning checkpoint into this module, as the trainer does for
        ``textvision test --ckpt_path``: :meth:`on_load_checkpoint` checks that only the frozen
        pretrained weights are absent, then a non-strict ``load_state_dict`` (shapes must fit).

        For tools that build the model from the config they are given (the visualiser); to
        rebuild the model the checkpoint was trained with, use :meth:`load_from_checkpoint`.
        """
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{checkpoint_path} is not a Lightning checkpoint (no state_dict)")
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"], strict=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dropped = {f"vlm.{n}" for n in self.vlm.reloadable_frozen_names()}
        state = checkpoint["state_dict"]
        for key in dropped & set(state):
            del state[key]
        checkpoint["textvision_dropped_keys"] = sorted(dropped)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = set(self.state_dict())
        present = set(checkpoint["state_dict"])
        allowed = {f"vlm.{n}" for n in self.vlm.reloadable_frozen_names()}
        missing = sorted(expected - present - allowed)
        unexpected = sorted(present - expected)
        if missing or unexpected:
            raise RuntimeError(
                "checkpoint does not fit the model: "
                f"missing trainable/random-init keys {missing[:20]}{' …' if len(missing) > 20 else ''}; "
                f"unexpected keys {unexpected[:20]}{' …' if len(unexpected) > 20 else ''}"
            )
