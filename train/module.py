"""The LightningModule: single-stage VLM training, option-scoring evaluation, lean checkpoints.

One stage as in Prismatic (Karamcheti et al., 2024): every trainable group (projector, fusion,
text adapter, LM or its LoRA/DoRA adapters, optionally the backbone) trains together from step
0, each with its own learning rate; AdamW with linear warmup and cosine decay.

Evaluation scores every option by the LM's log-likelihood (``TextAwareVLM.score_options``) and
reports, per evaluation set: loss, accuracy, pair accuracy (MMVP's metric: a pair counts only if
all its items are right) where items carry ``pair_id >= 0``, and the chance level of both.

Checkpoints hold trainable weights only: frozen weights that construction reloads from their
pretrained source (``TextAwareVLM.reloadable_frozen_names``) are dropped from ``state_dict`` and
checked on load. Hyperparameters are the plain config dict LightningCLI records, so
``torch.load(ckpt, weights_only=True)`` works and ``load_from_checkpoint`` rebuilds the model.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from textvision.pruning.selection import grounding_loss, kept_target_rate
from textvision.vlm.model import TextAwareVLM, choose_options

__all__ = ["TextVisionModule", "evaluation_metrics"]

_STAGES = ("val", "test")


def evaluation_metrics(correct: Tensor, num_options: Tensor, pair_ids: Tensor) -> dict[str, float]:
    """Accuracy, pair accuracy and their chance levels from per-item results.

    Args:
        correct: (N,) bool, the item's top-scored option is its label.
        num_options: (N,) long, how many options the item had (chance = 1 / that).
        pair_ids: (N,) long, ``-1`` for items outside any pair.

    Returns a dict with ``acc``, ``chance_acc``, ``n`` and, when pairs exist, ``pair_acc``,
    ``chance_pair_acc`` and ``n_pairs`` (a pair is right only if all its items are right; its
    chance is the product of its items' chances).
    """
    n = int(correct.numel())
    if n == 0:
        return {"n": 0}
    chance = 1.0 / num_options.clamp_min(1).double()
    out = {"acc": correct.double().mean().item(), "chance_acc": chance.mean().item(), "n": n}
    in_pair = pair_ids >= 0
    if in_pair.any():
        ids, inverse = torch.unique(pair_ids[in_pair], return_inverse=True)
        wrong = torch.zeros(len(ids), dtype=torch.long).index_add_(0, inverse, (~correct[in_pair]).long())
        log_chance = torch.zeros(len(ids), dtype=torch.double).index_add_(0, inverse, chance[in_pair].log())
        out["pair_acc"] = (wrong == 0).double().mean().item()
        out["chance_pair_acc"] = log_chance.exp().mean().item()
        out["n_pairs"] = len(ids)
    return out


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
        self._records: dict[str, dict[str, list[Tensor]]] = defaultdict(lambda: defaultdict(list))
        # question categories seen in evaluation, in order of appearance (ids in the records)
        self.category_names: list[str] = []
        self.eval_results: dict[str, dict[str, dict[str, float]]] = {}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        visual, out = self.vlm.encode(batch["image"], batch["instruction"])
        loss = self.vlm.language_model.loss(visual, batch["prompt"], batch["answer"])
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
        labels = torch.as_tensor(batch["label"], device=self.device).long()
        pair_ids = torch.as_tensor(batch.get("pair_id", [-1] * size), device=self.device).long()
        has_options = torch.tensor([len(o) > 0 for o in batch["options"]], device=self.device)
        out: dict[str, Tensor] = {"loss": loss}
        if has_options.any():
            scores = lm.score(
                visual, batch["prompt"], batch["options"], length_normalize=self.vlm.length_normalize
            )
            pred = choose_options(scores, [len(o) for o in batch["options"]])  # -1: broken scores
            keep = has_options & (labels >= 0)
            rec = self._records[f"{stage}/{name}"]
            rec["correct"].append((pred == labels)[keep].cpu())
            rec["invalid"].append((pred < 0)[keep].cpu())
            rec["num_options"].append(torch.tensor([len(o) for o in batch["options"]])[keep.cpu()])
            rec["pair_id"].append(pair_ids[keep].cpu())
            rec["category"].append(self._category_ids(batch.get("category"), size)[keep.cpu()])
            out["pred"] = pred
        if "target_patch" in batch:
            kept = getattr(encoded, "kept_indices", None)
            self._records[f"{stage}/{name}"]["kept_target"].append(
                kept_target_rate(kept, batch["target_patch"], reduce=False).cpu()
            )
        if self.hparams.eval_generate:
            replies = lm.generate(visual, batch["prompt"], max_new_tokens=self.hparams.max_new_tokens)
            match = [
                r.strip().lower() == a.strip().lower() for r, a in zip(replies, batch["answer"], strict=True)
            ]
            self._records[f"{stage}/{name}"]["exact_match"].append(torch.tensor(match))
        return out

    def _category_ids(self, categories: list[str] | None, size: int) -> Tensor:
        """``(B,)`` long ids of the items' question categories (the names in ``self.category_names``)."""
        ids = []
        for category in categories or [""] * size:
            if category not in self.category_names:
                self.category_names.append(category)
            ids.append(self.category_names.index(category))
        return torch.tensor(ids, dtype=torch.long)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        return self._eval_step(batch, "test", dataloader_idx)

    def _gather(self, tensors: list[Tensor]) -> Tensor:
        local = torch.cat(tensors) if tensors else torch.empty(0)
        if self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return local
        parts: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(parts, local)
        return torch.cat(parts)

    def _eval_epoch_end(self, stage: str) -> None:
        results: dict[str, dict[str, float]] = {}
        for key in sorted(k for k in self._records if k.startswith(f"{stage}/")):
            rec = self._records[key]
            name = key.split("/", 1)[1]
            metrics = evaluation_metrics(
                self._gather(rec["correct"]).bool(),
                self._gather(rec["num_options"]).long(),
                self._gather(rec["pair_id"]).long(),
            )
            if rec["invalid"]:
                # items whose option scores were NaN/inf: counted as wrong, never as an answer
                invalid = self._gather(rec["invalid"]).bool()
                metrics["n_invalid"] = int(invalid.sum())
                metrics["invalid"] = invalid.double().mean().item() if invalid.numel() else 0.0
                if metrics["n_invalid"]:
                    rank_zero_warn(
                        f"{stage}/{name}: {metrics['n_invalid']} of {invalid.numel()} items had NaN/inf "
                        "option scores; they are counted as wrong (metric 'invalid')"
                    )
            if rec["exact_match"]:
                metrics["exact_match"] = self._gather(rec["exact_match"]).double().mean().item()
            if rec["kept_target"]:
                hits = self._gather(rec["kept_target"]).long()
                if bool((hits >= 0).any()):
                    metrics["kept_target"] = hits[hits >= 0].double().mean().item()
            if rec["category"]:
                category = self._gather(rec["category"]).long()
                correct = self._gather(rec["correct"]).bool()
                num_options = self._gather(rec["num_options"]).long()
                pair_id = self._gather(rec["pair_id"]).long()
                by_category = {}
                for cid in sorted(set(category.tolist())):
                    sel = category == cid
                    by_category[self.category_names[cid]] = evaluation_metrics(
                        correct[sel], num_options[sel], pair_id[sel]
                    )
                if len(by_category) > 1 or "" not in by_category:
                    metrics["by_category"] = by_category
            results[name] = metrics
            for metric, value in metrics.items():
                if metric == "by_category":
                    for category, cat_metrics in value.items():
                        self.log(
                            f"{stage}/{name}/{category}/acc",
                            cat_metrics["acc"],
                            add_dataloader_idx=False,
                            rank_zero_only=True,
                        )
                elif metric != "n" and not metric.startswith("n_"):
                    self.log(f"{stage}/{name}/{metric}", value, add_dataloader_idx=False, rank_zero_only=True)
        if results:
            accs = [m["acc"] for m in results.values() if "acc" in m]
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
