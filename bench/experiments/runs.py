"""One experiment run: a config merged by LightningCLI, trained through it, evaluated.

Every number of the fusion ablation, the budget sweep and the pruning curve comes from
:func:`train_and_evaluate` (or :func:`evaluate_trained` for test-time changes of a trained model):

1. the run's config is what ``textvision fit -c <base> -c <variant overlay> <flags>`` parses: the
   base config (``configs/demo.yaml`` by default), the variant's overlay
   (``configs/ablation/<variant>.yaml``) and flags for what the experiment varies — the
   visual-token budget and, at test time, the pruning scorer — plus the run's size (steps, batch,
   seed, test items) and bookkeeping (run folder, a CSV logger, no validation or checkpoint
   callbacks: the held-out test below is the measurement). LightningCLI does all the merging
   (:func:`run_arguments` only writes the command line);
2. the merged config is written into the run folder (``textvision fit -c <run folder>/config.yaml``
   reproduces the run) and trained with ``TextVisionCLI(args=..., run=False)`` + ``trainer.fit``;
3. the trained ``TextAwareVLM`` is scored on the datamodule's fixed held-out test splits through
   the evaluator (``textvision.eval.evaluate_benchmark``, option log-likelihood), giving accuracy
   per set and MMVP pair accuracy for ``mmvp_pairs``;
4. the weights go to ``model.ckpt`` through the trainer's own checkpoint path
   (``trainer.save_checkpoint``, frozen pretrained weights left out by the module, the config's
   ``CheckpointIO`` plugin) and the record to ``result.json``; the folder is named by a hash of the
   merged config, so a second call with the same settings reads the record instead of training
   again (the budget sweep reuses the ablation's runs this way).

Encoder time is measured separately (:func:`time_encoder`), so it can be re-measured on a quiet
machine without retraining.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from textvision.train.cli import TextVisionCLI, parse_config

__all__ = [
    "HEADLINE_METRICS",
    "VARIANT_CONFIGS",
    "BenchSettings",
    "RunSpec",
    "StepTimer",
    "above_chance",
    "add_common_arguments",
    "base_max_steps",
    "component_class",
    "component_name",
    "config_hash",
    "count_parameters",
    "describe_encoder",
    "evaluate_sets",
    "evaluate_trained",
    "image_dependence",
    "load_trained",
    "pct",
    "probe_trained",
    "run_arguments",
    "settings_from_args",
    "time_encoder",
    "train_and_evaluate",
    "write_result",
]

log = logging.getLogger(__name__)

#: the encoder's settings in a parsed config (a dotted key) and on the command line (``--`` + it)
ENCODER = "model.vlm.init_args.encoder.init_args"
_REPO_ROOT = Path(__file__).resolve().parents[2]
#: the weights of a run, written by ``trainer.save_checkpoint``
_CHECKPOINT = "model.ckpt"


@dataclass(frozen=True)
class RunSpec:
    """What one run varies: the variant overlay, the visual-token budget, and optionally the scorer.

    Args:
        overlay: a LightningCLI YAML merged over the base config (e.g.
            ``configs/ablation/gated_xattn.yaml``), as ``textvision fit -c base -c overlay`` does;
            None: the base config alone.
        keep_tokens: patches kept at the pruning step (CLS is added on top), or None.
        keep_ratio: fraction of patches kept instead of ``keep_tokens``; ``1.0`` disables pruning
            (``prune_at: []``, the unpruned encoder).
        scorer: a pruning scorer set on top (a registered short name, e.g. to swap the scorer of a
            trained model at test time); None: the config's.
        label: display name; default the variant, and the scorer when one is set.
    """

    overlay: str | None = None
    keep_tokens: int | None = None
    keep_ratio: float | None = None
    scorer: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if (self.keep_tokens is None) == (self.keep_ratio is None):
            raise ValueError(f"{self}: give exactly one of keep_tokens and keep_ratio")
        if self.keep_tokens is not None and self.keep_tokens < 1:
            raise ValueError(f"{self}: keep_tokens must be >= 1")
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"{self}: keep_ratio must be in (0, 1]")

    @property
    def variant(self) -> str:
        """The overlay's file name without ``.yaml``, or ``base`` without an overlay."""
        return Path(self.overlay).stem if self.overlay else "base"

    @property
    def name(self) -> str:
        return self.label or (f"{self.variant}, {self.scorer} scorer" if self.scorer else self.variant)

    @property
    def budget(self) -> str:
        return f"k{self.keep_tokens}" if self.keep_tokens is not None else f"r{self.keep_ratio:g}"

    def encoder_flags(self) -> list[str]:
        """The command-line flags setting this run's encoder budget (and scorer)."""
        values: dict[str, Any] = {}
        if self.scorer is not None:
            values["scorer"] = self.scorer
        if self.keep_ratio == 1.0:
            values.update(prune_at=[], keep_tokens=None, keep_ratio=None)
        elif self.keep_ratio is not None:
            values.update(keep_tokens=None, keep_ratio=float(self.keep_ratio))
        else:
            values.update(keep_tokens=int(self.keep_tokens), keep_ratio=None)
        return _flags(ENCODER, values)


def _flags(key: str, values: Mapping[str, Any]) -> list[str]:
    """``-c <values under the dotted key, as YAML>``: merged by LightningCLI like one more config
    file (a ``--a.init_args.b null`` flag is not read as None inside nested class arguments)."""
    tree: Any = dict(values)
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return ["-c", json.dumps(tree)]  # JSON is YAML


#: the variant overlays of the experiments (:mod:`textvision.bench.experiments.variants`)
VARIANT_CONFIGS = _REPO_ROOT / "configs" / "ablation"


@dataclass
class BenchSettings:
    """What every run of one experiment shares (identical budgets across variants).

    Args:
        base_config: LightningCLI YAML the runs derive from.
        steps: optimizer steps per run.
        batch_size: training batch (None: the base config's).
        seed: ``seed_everything`` and the synthetic sets' seed.
        test_size: held-out test items per synthetic set (even: pairs).
        eval_batch_size: evaluation batch.
        work_dir: where run folders (config, CSV log, weights, result) go.
        timing_batch: images per encoder forward when timing.
        timing_repeats: timed forwards (median and min reported).
        force: retrain even when a cached result exists.
        variant_configs: folder of the variant overlay YAMLs (``configs/ablation/``), each merged
            over the base config.
    """

    base_config: Path = field(default_factory=lambda: _REPO_ROOT / "configs" / "demo.yaml")
    steps: int = 700
    batch_size: int | None = None
    seed: int = 0
    test_size: int = 512
    eval_batch_size: int = 64
    work_dir: Path = Path("runs/bench")
    timing_batch: int = 64
    timing_repeats: int = 7
    force: bool = False
    variant_configs: Path = VARIANT_CONFIGS

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings; paths inside the repository are given relative to it."""
        out = asdict(self)
        out["base_config"] = _display_path(self.base_config)
        out["work_dir"] = str(self.work_dir)
        out["variant_configs"] = _display_path(self.variant_configs)
        return out


def _display_path(path: str | Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(_REPO_ROOT))
    except ValueError:
        return str(path)


class StepTimer(Callback):
    """Logs progress every ``every`` optimizer steps and keeps the mean wall time per step.

    Args:
        every: log interval in optimizer steps.
    """

    def __init__(self, *, every: int = 50) -> None:
        super().__init__()
        self.every = max(1, int(every))
        self.start: float | None = None
        self.seconds_per_step: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.start is None or step == 0:
            return
        self.seconds_per_step = (time.perf_counter() - self.start) / step
        if step % self.every == 0 or step == trainer.max_steps:
            loss = trainer.callback_metrics.get("train/loss")
            log.info(
                "step %d/%d  %.2f s/step  loss %s",
                step,
                trainer.max_steps,
                self.seconds_per_step,
                "?" if loss is None else f"{float(loss):.4f}",
            )


def _cli(args: Sequence[str]) -> TextVisionCLI:
    with warnings.catch_warnings():
        # LightningCLI warns when args are given while sys.argv holds the bench runner's own flags.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return TextVisionCLI(args=list(args), run=False)


def config_hash(config_yaml: str) -> str:
    """The run's identity: a hash of its merged config (without the run folder)."""
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:10]


def component_class(value: Any, registry: Mapping[str, type]) -> type:
    """The class a config's ``fusion`` or ``scorer`` value stands for: a short name of
    ``registry`` (``FUSIONS``, ``SCORERS``) or a ``class_path`` (with its ``init_args``)."""
    if isinstance(value, str):
        return registry[value]
    module, _, name = str(value.get("class_path")).rpartition(".")
    return getattr(importlib.import_module(module), name)


def component_name(value: Any, registry: Mapping[str, type]) -> str:
    """The short name of a config's ``fusion``/``scorer`` value, or its class path when the class
    has none (a user's variant)."""
    cls = component_class(value, registry)
    return next((n for n, c in registry.items() if c is cls), f"{cls.__module__}.{cls.__qualname__}")


def describe_encoder(config: Any) -> dict[str, Any]:
    """The fusion and scorer of a parsed config, by name, and what their classes declare."""
    from textvision.fusion import FUSIONS
    from textvision.pruning import SCORERS

    fusion, scorer = config[f"{ENCODER}.fusion"], config[f"{ENCODER}.scorer"]
    return {
        "fusion": component_name(fusion, FUSIONS),
        "scorer": component_name(scorer, SCORERS),
        "fusion_attends_to_text": component_class(fusion, FUSIONS).attends_to_text,
        "scorer_attends_to_text": component_class(scorer, SCORERS).attends_to_text,
        "pruned": bool(config[f"{ENCODER}.prune_at"]),
    }


def _base_arguments(spec: RunSpec, settings: BenchSettings) -> list[str]:
    base = Path(settings.base_config)
    if not base.is_file():
        raise FileNotFoundError(f"base config {base} not found (pass --base-config PATH)")
    if spec.overlay is not None and not Path(spec.overlay).is_file():
        raise FileNotFoundError(f"overlay config {spec.overlay} not found")
    return ["-c", str(base)] + ([] if spec.overlay is None else ["-c", str(spec.overlay)])


def run_arguments(spec: RunSpec, settings: BenchSettings) -> list[str]:
    """The ``TextVisionCLI`` arguments of a run, less its folder: ``-c base [-c overlay]`` and flags.

    Only the encoder's budget (and scorer, when ``spec`` sets one), the trainer's length,
    logging and callbacks, and the data's ``seed``/``test_size``/``batch_size`` are set; everything
    else (model sizes, learning rates, data geometry) is the configs'. An object curriculum
    (``data.init_args.objects_warmup_steps``) keeps its *fraction* of the base run's
    ``max_steps``, so a shorter bench run still ends on full-size scenes.
    """
    args = _base_arguments(spec, settings)
    base, _ = parse_config(args)
    if not base[f"{ENCODER}.prune_at"] and spec.keep_ratio != 1.0:
        raise ValueError(
            f"{' + '.join(args[1::2])}: the encoder has no prune_at, so a token budget cannot be set"
        )
    steps = int(settings.steps)
    timer = f"{StepTimer.__module__}.{StepTimer.__qualname__}"
    trainer = {
        # the run's folder is set when it is built (_folder_flags); this one stands for it, so that
        # a variant overlay's own default_root_dir does not split runs of the same model
        "default_root_dir": str(settings.work_dir),
        "max_steps": steps,
        "max_epochs": -1,
        "callbacks": [{"class_path": timer, "init_args": {"every": 50}}],
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": max(1, min(10, steps)),
    }
    data: dict[str, Any] = {
        "seed": int(settings.seed),
        "test_size": int(settings.test_size),
        "eval_batch_size": int(settings.eval_batch_size),
    }
    if settings.batch_size is not None:
        data["batch_size"] = int(settings.batch_size)
    warmup, base_steps = base.get("data.init_args.objects_warmup_steps") or 0, base["trainer.max_steps"] or 0
    if warmup and base_steps > 0:
        data["objects_warmup_steps"] = max(1, round(warmup * steps / base_steps))
    return [
        *args,
        *spec.encoder_flags(),
        *_flags("trainer", trainer),
        *_flags("data.init_args", data),
        "--seed_everything",
        str(int(settings.seed)),
    ]


def _folder_flags(run_dir: Path) -> list[str]:
    """Where a run writes: its folder and a CSV logger in it (not part of its identity)."""
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "csv", "version": 0},
    }
    return _flags("trainer", {"default_root_dir": str(run_dir), "logger": [logger]})


def count_parameters(
    module: torch.nn.Module, groups: Mapping[str, Sequence[torch.nn.Parameter]]
) -> dict[str, Any]:
    """Total (frozen included, tied weights once) and trainable parameter counts, and per group."""
    unique = {id(p): p for p in module.parameters()}
    return {
        "total": sum(p.numel() for p in unique.values()),
        "trainable": sum(p.numel() for p in unique.values() if p.requires_grad),
        "frozen": sum(p.numel() for p in unique.values() if not p.requires_grad),
        "trainable_by_group": {name: sum(p.numel() for p in params) for name, params in groups.items()},
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=_REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def evaluate_sets(vlm: torch.nn.Module, datasets: Mapping[str, Any], *, batch_size: int) -> dict[str, Any]:
    """Option-scoring evaluation of ``vlm`` on each held-out set through ``evaluate_benchmark``.

    Returns ``{set: {"accuracy", "items", "pair_accuracy"?, "pairs"?, "per_category"}}``.
    """
    from textvision.eval.run import evaluate_benchmark

    out: dict[str, Any] = {}
    for name, dataset in datasets.items():
        result = evaluate_benchmark(
            vlm, name, data=dataset, mode="options", batch_size=batch_size, progress=False
        )
        metrics = result["metrics"]["option-loglik"]
        # The bench records keep their own field names (results/ holds records written with them).
        entry: dict[str, Any] = {"accuracy": metrics["acc"], "items": metrics["n"]}
        if "pair_acc" in metrics:
            entry.update(pair_accuracy=metrics["pair_acc"], pairs=metrics["n_pairs"])
        entry["per_category"] = {
            cat: {
                name: m[key]
                for name, key in (
                    ("accuracy", "acc"),
                    ("pair_accuracy", "pair_acc"),
                    ("total", "n"),
                    ("pairs", "n_pairs"),
                )
                if key in m
            }
            for cat, m in metrics.get("by_category", {}).items()
        }
        out[name] = entry
    return out


@torch.inference_mode()
def time_encoder(
    encoder: torch.nn.Module,
    images: torch.Tensor,
    instructions: Sequence[str],
    *,
    repeats: int = 7,
    warmup: int = 2,
) -> dict[str, Any]:
    """Encoder forward time per image (ms), text features precomputed (a frozen encoder's cache).

    Times ``encoder(images, text_features=...)`` — the vision side with its fusion and pruning —
    ``repeats`` times after ``warmup`` untimed calls; reports the median and the minimum (the
    least-disturbed run on a shared machine).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    was_training = encoder.training
    encoder.eval()
    features = encoder.encode_text(list(instructions))
    for _ in range(warmup):
        encoder(images, text_features=features)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder(images, text_features=features)
        times.append(time.perf_counter() - start)
    encoder.train(was_training)
    batch = images.shape[0]
    return {
        "ms_per_image_median": 1000 * statistics.median(times) / batch,
        "ms_per_image_min": 1000 * min(times) / batch,
        "batch": batch,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
    }


def _add_chance(sets: dict[str, Any], datamodule) -> None:
    """Put each set's chance levels (from the datamodule) beside its metrics."""
    chance = getattr(datamodule, "chance", {}) or {}
    for name, entry in sets.items():
        entry["chance"] = chance.get(name, {}).get("acc")
        if "pair_accuracy" in entry:
            entry["pair_chance"] = chance.get(name, {}).get("pair_acc")


def _timing_batch(datamodule, size: int) -> tuple[torch.Tensor, list[str]]:
    from textvision.data.collate import collate_samples

    dataset = next(iter(datamodule.test_datasets().values()))
    size = min(size, len(dataset))
    batch = collate_samples(dataset.__getitems__(list(range(size))))
    return batch["image"], list(batch["instruction"])


#: encoder modules that an evaluation-time setting may leave out of a trained model: a scorer with
#: parameters swapped for one without (``similarity``), no pruning or a non-differentiable scorer
#: (``relevance_embedding``)
_EVAL_TIME_MODULES = ("vlm.encoder.similarity.", "vlm.encoder.relevance_embedding")


def _load_weights(module, path: Path) -> None:
    """A run's checkpoint into ``module``, as :meth:`TextVisionModule.load_weights` loads it
    (``on_load_checkpoint`` checks that only frozen pretrained weights are absent), less the
    weights of encoder modules that this evaluation's pruning setting does not build."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state, built = checkpoint["state_dict"], set(module.state_dict())
    for key in [k for k in state if k not in built and k.startswith(_EVAL_TIME_MODULES)]:
        del state[key]
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(state, strict=False)


def train_and_evaluate(spec: RunSpec, settings: BenchSettings, *, timing: bool = False) -> dict[str, Any]:
    """Train ``spec`` under ``settings`` (or read its cached result) and evaluate it on the test sets.

    Returns the run record (also in ``<run folder>/result.json``): spec, the encoder's fusion and
    scorer, parameter counts, visual tokens reaching the LM, per-set metrics with chance levels,
    seconds, final loss; with ``timing``, also ``encoder_time`` (:func:`time_encoder`) and
    ``image_dependence``, measured now — on the model in memory after training, or on the rebuilt
    model for a cached run — and not cached, so a re-run on a quiet machine re-measures them.
    """
    args = run_arguments(spec, settings)
    config, config_yaml = parse_config(args)
    digest, encoder = config_hash(config_yaml), describe_encoder(config)
    # named by what was trained, not by who asked: the same config from another variant file
    # (an overlay equal to the base config) is the same run
    run_dir = Path(settings.work_dir) / f"{encoder['fusion']}-{encoder['scorer']}-{spec.budget}-{digest}"
    result_path, checkpoint = run_dir / "result.json", run_dir / _CHECKPOINT
    if result_path.is_file() and checkpoint.is_file() and not settings.force:
        record = json.loads(result_path.read_text())
        if record.get("config_hash") == digest:
            log.info("%s: cached result %s", spec.name, result_path)
            record.update(spec=asdict(spec), name=spec.name, cached=True)
            if timing:
                record["encoder_time"], record["image_dependence"] = probe_trained(record, settings)
            return record
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cli = _cli([*args, *_folder_flags(run_dir)])
    config_path = run_dir / "config.yaml"
    config_path.write_text(cli.parser.dump(cli.config, skip_unset=False))
    log.info("%s: training %d steps (%s)", spec.name, settings.steps, config_path)
    module, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    built = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fitted = time.perf_counter()
    sets = evaluate_sets(module.vlm, datamodule.test_datasets(), batch_size=settings.eval_batch_size)
    evaluated = time.perf_counter()
    _add_chance(sets, datamodule)
    loss = trainer.callback_metrics.get("train/loss")
    timer = next((c for c in trainer.callbacks if isinstance(c, StepTimer)), None)
    record = {
        "spec": asdict(spec),
        "name": spec.name,
        "encoder": encoder,
        "config_hash": digest,
        "run_dir": str(run_dir),
        "config": str(config_path),
        "base_config": _display_path(settings.base_config),
        "steps": int(trainer.global_step),
        "batch_size": int(getattr(datamodule, "batch_size", 0)),
        "seed": settings.seed,
        "params": count_parameters(module, module.vlm.parameter_groups()),
        "visual_tokens_to_lm": int(module.vlm.encoder.num_tokens()),
        "sets": sets,
        "final_train_loss": None if loss is None else float(loss),
        "seconds": {
            "build": round(built - start, 1),
            "fit": round(fitted - built, 1),
            "evaluate": round(evaluated - fitted, 1),
            "per_train_step": None
            if timer is None or timer.seconds_per_step is None
            else round(timer.seconds_per_step, 3),
        },
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "cached": False,
    }
    # the trainer's own checkpoint path: the module leaves out the frozen pretrained weights
    trainer.save_checkpoint(checkpoint, weights_only=True)
    result_path.write_text(json.dumps(record, indent=2) + "\n")
    if timing:
        images, instructions = _timing_batch(datamodule, settings.timing_batch)
        record["encoder_time"] = time_encoder(
            module.vlm.encoder, images, instructions, repeats=settings.timing_repeats
        )
        record["image_dependence"] = image_dependence(module.vlm, datamodule.test_datasets())
    return record


def load_trained(record: Mapping[str, Any], spec: RunSpec | None = None) -> TextVisionCLI:
    """Rebuild a trained run's model from its config, optionally with another pruning setting.

    ``spec`` (default: the run's own) changes only the encoder's budget and scorer, as flags on
    top of the run's config; the weights are the run's checkpoint. Returns the LightningCLI
    object (``.model``, ``.datamodule``), the test splits set up.
    """
    flags = [] if spec is None else spec.encoder_flags()
    cli = _cli(["-c", str(record["config"]), *flags])
    _load_weights(cli.model, Path(record["run_dir"]) / _CHECKPOINT)
    cli.datamodule.setup("test")
    return cli


def evaluate_trained(
    record: Mapping[str, Any], spec: RunSpec, settings: BenchSettings, *, timing: bool = True
) -> dict[str, Any]:
    """Test-time change of a trained run: rebuild it with ``spec``'s pruning, evaluate and time it."""
    cli = load_trained(record, spec)
    module = cli.model.eval()
    start = time.perf_counter()
    sets = evaluate_sets(module.vlm, cli.datamodule.test_datasets(), batch_size=settings.eval_batch_size)
    _add_chance(sets, cli.datamodule)
    out: dict[str, Any] = {
        "trained": record["name"],
        "trained_budget": RunSpec(**record["spec"]).budget,
        "spec": asdict(spec),
        "encoder": describe_encoder(cli.config),
        "visual_tokens_to_lm": int(module.vlm.encoder.num_tokens()),
        "sets": sets,
        "seconds_evaluate": round(time.perf_counter() - start, 1),
    }
    if timing:
        images, instructions = _timing_batch(cli.datamodule, settings.timing_batch)
        out["encoder_time"] = time_encoder(
            module.vlm.encoder, images, instructions, repeats=settings.timing_repeats
        )
    return out


def probe_trained(
    record: Mapping[str, Any], settings: BenchSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Encoder timing and :func:`image_dependence` of a trained run, from one rebuild."""
    cli = load_trained(record)
    images, instructions = _timing_batch(cli.datamodule, settings.timing_batch)
    timing = time_encoder(cli.model.vlm.encoder, images, instructions, repeats=settings.timing_repeats)
    return timing, image_dependence(cli.model.vlm, cli.datamodule.test_datasets())


@torch.no_grad()
def image_dependence(vlm: torch.nn.Module, datasets: Mapping[str, Any], *, batch: int = 64) -> dict[str, Any]:
    """Does the answer depend on the image? Answer loss with the real images vs. shuffled ones.

    The first ``batch`` held-out items of each set are scored twice with the same questions:
    with their own images, and with the images rolled by one position (each question sees another
    item's image). A model that reads the image loses accuracy and gains loss on shuffled
    images; equal losses mean the LM ignores the visual tokens. Returns, per set, ``loss``,
    ``loss_shuffled_images`` and their difference ``delta``.
    """
    from textvision.data.collate import collate_samples

    was_training = vlm.training
    vlm.eval()
    out: dict[str, Any] = {}
    for name, dataset in datasets.items():
        items = collate_samples(dataset.__getitems__(list(range(min(batch, len(dataset))))))
        images = items["image"]
        rolled = images.roll(1, dims=0)
        args = (items["instruction"], items["prompt"], items["answer"])
        real = float(vlm.loss(images, *args))
        shuffled = float(vlm.loss(rolled, *args))
        out[name] = {
            "loss": real,
            "loss_shuffled_images": shuffled,
            "delta": shuffled - real,
            "items": len(images),
        }
    vlm.train(was_training)
    return out


#: (set, metric, chance key) of the headline metrics
HEADLINE_METRICS = (
    ("magnifier", "accuracy", "chance"),
    ("mmvp_pairs", "accuracy", "chance"),
    ("mmvp_pairs", "pair_accuracy", "pair_chance"),
)


def above_chance(run: Mapping[str, Any], *, margin: float = 0.05) -> bool:
    """Whether any headline metric of ``run`` beats its chance level by more than ``margin``.

    With 512 test items the standard error of an accuracy near 25% is about 2 points, so the
    default 5-point margin separates "learned something" from sampling noise.
    """
    for set_name, metric, chance_key in HEADLINE_METRICS:
        entry = run.get("sets", {}).get(set_name, {})
        value, chance = entry.get(metric), entry.get(chance_key)
        if value is not None and chance is not None and value > chance + margin:
            return True
    return False


def pct(value: float | None) -> str:
    """``0.123 -> "12.3%"``; ``None -> "–"`` (markdown cells)."""
    return "–" if value is None else f"{100 * value:.1f}%"


def add_common_arguments(parser) -> None:
    """The flags every bench runner shares (sizes of the runs, where things go)."""
    defaults = BenchSettings()
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="results folder (JSON, markdown, PNG)"
    )
    parser.add_argument(
        "--base-config", type=Path, default=defaults.base_config, help="LightningCLI YAML to derive runs from"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per run (default: the base config's trainer.max_steps, so a bench run "
        "trains as long as the demo it derives from)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: the base config's)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--test-size", type=int, default=defaults.test_size, help="held-out items per set")
    parser.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    parser.add_argument(
        "--work-dir", type=Path, default=defaults.work_dir, help="run folders (weights, logs)"
    )
    parser.add_argument("--timing-batch", type=int, default=defaults.timing_batch)
    parser.add_argument("--timing-repeats", type=int, default=defaults.timing_repeats)
    parser.add_argument("--force", action="store_true", help="retrain runs that have a cached result")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is much faster when the CPU is shared with other "
        "jobs (no OpenMP spin-waiting on a descheduled thread)",
    )
    parser.add_argument(
        "--variant-configs",
        type=Path,
        default=defaults.variant_configs,
        help="folder of the variant overlay YAMLs (configs/ablation)",
    )


def base_max_steps(config_path: str | Path) -> int:
    """``trainer.max_steps`` of a LightningCLI YAML as the CLI parses it (the default run length)."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"base config {path} not found")
    steps = parse_config(["-c", str(path)])[0]["trainer.max_steps"]
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"{path}: trainer.max_steps must be a positive integer to default --steps, got {steps!r}"
        )
    return steps


def settings_from_args(args) -> BenchSettings:
    """The :class:`BenchSettings` of parsed flags; applies ``--threads`` to torch."""
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else base_max_steps(args.base_config)
    return BenchSettings(
        base_config=args.base_config,
        steps=steps,
        batch_size=args.batch_size,
        seed=args.seed,
        test_size=args.test_size,
        eval_batch_size=args.eval_batch_size,
        work_dir=args.work_dir,
        timing_batch=args.timing_batch,
        timing_repeats=args.timing_repeats,
        force=args.force,
        variant_configs=args.variant_configs,
    )


def write_result(
    result: Mapping[str, Any], out: str | Path, stem: str, *, title: str, markdown: str, plot
) -> Path:
    """Write ``<stem>.json``, ``<stem>.md`` (``# title`` + ``markdown``) and ``<stem>.png``
    (``plot(result, path)``) into ``out``; print the table and the paths. Returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(f"# {title}\n\n{markdown}\n")
    plot(result, out / f"{stem}.png")
    print(markdown)
    print(f"wrote {out / stem}.json, .md and .png")
    return out
