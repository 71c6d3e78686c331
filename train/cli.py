"""The ``textvision`` command.

``textvision fit|validate|test|predict -c configs/<x>.yaml`` is LightningCLI over
:class:`~textvision.train.module.TextVisionModule` and any ``LightningDataModule`` (named by
``data.class_path``); resume with ``--ckpt_path last``. Two extra sub-commands:

* ``textvision demo [--config configs/demo.yaml] [--output_dir results/demo]``: the offline CPU
  demo (fit, test on the held-out synthetic sets, metrics JSON, markdown table, pictures);
* ``textvision eval …``: the benchmark evaluator (``textvision.eval.cli``).

**Run folders.** ``{run_dir}`` in a logger's ``save_dir`` or a callback's ``dirpath``, and a
``ModelCheckpoint`` without ``dirpath`` (what the shipped configs give) stand for the run's own
folder ``<trainer.default_root_dir>/version_<N>/`` (``checkpoints/``, the loggers' folders), a
fresh one per run (a resumed run keeps its folder), so two runs never write into each other,
``--trainer.default_root_dir`` moves all of it, and ``last.ckpt`` is always the newest of its
run. Paths that a config spells out are used as they are.

**Checkpoints and configs.** ``--ckpt_path last`` is the newest ``last*.ckpt`` among this
config's run folders (and its explicit checkpoint folders); the command says which file it
loads. A checkpoint records the model (and data) configuration it was trained with; Lightning's
own CLI would silently rebuild *that* model, whatever the command line says. Here the model is
always built from the config that was given, and the checkpoint only supplies the weights:

* ``fit`` (resuming) refuses a checkpoint whose model or training-data settings differ, naming
  each one (a resumed run must be the run that was stopped);
* ``validate``/``test``/``predict`` accept differences in evaluation-time settings (pruning
  budget and scorer, caches, generation length, the optimiser's settings, any data) — each is
  printed — and refuse any other difference, naming each setting.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningCLI

from textvision.train.module import TextVisionModule

__all__ = ["CheckpointConfigError", "TextVisionCLI", "cli_main", "config_differences", "parse_config"]

#: environment variable through which Lightning's DDP child processes get the parent's run folder
RUN_DIR_ENV = "TEXTVISION_RUN_DIR"
#: written in a logger's ``save_dir`` or a callback's ``dirpath``: replaced by the run's folder
RUN_DIR_TOKEN = "{run_dir}"

#: model settings that only change how a trained model is evaluated (names of settings; anything
#: inside one, such as a scorer's ``class_path`` and ``init_args``, is one too)
EVAL_TIME_SETTINGS = frozenset(
    {
        "prune_at",
        "keep_ratio",
        "keep_tokens",
        "scorer",
        "merge_dropped",
        "backend",
        "cache_size",
        "attn_implementation",
        "gradient_checkpointing",
        "length_normalize",
        "eval_generate",
        "max_new_tokens",
    }
)
#: top-level model settings of the optimiser (no effect on the weights a checkpoint holds)
OPTIMIZER_SETTINGS = frozenset(
    {
        "lr",
        "lr_projector",
        "lr_fusion",
        "lr_text_adapter",
        "lr_backbone",
        "lr_text_encoder",
        "lr_language_model",
        "weight_decay",
        "beta1",
        "beta2",
        "eps",
        "warmup_ratio",
        "min_lr_ratio",
        "delay_steps",
    }
)
#: settings a resumed fit may change without changing what it trains on
RESUME_SAFE_MODEL_SETTINGS = frozenset(
    {"cache_size", "gradient_checkpointing", "eval_generate", "max_new_tokens"}
)
RESUME_SAFE_DATA_SETTINGS = frozenset({"num_workers", "eval_batch_size", "test_size", "cache_dir"})


class CheckpointConfigError(ValueError):
    """A checkpoint was trained with settings that the given config contradicts (named in the message)."""


# --------------------------------------------------------------------------------------- helpers
def _plain(value: Any) -> Any:
    """A jsonargparse Namespace / tuple / Path tree as plain JSON values."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def config_differences(trained: Any, given: Any) -> dict[str, tuple[Any, Any]]:
    """``{dotted path: (checkpoint value, given value)}`` for every setting that differs.

    Keys starting with ``_`` (LightningCLI's bookkeeping) are ignored; below a differing
    ``class_path`` only the class path itself is reported.
    """
    missing = object()
    a = {k: v for k, v in _flatten(_plain(trained)).items() if not k.split(".")[-1].startswith("_")}
    b = {k: v for k, v in _flatten(_plain(given)).items() if not k.split(".")[-1].startswith("_")}
    diffs = {}
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, missing), b.get(key, missing)
        if old != new:
            diffs[key] = (None if old is missing else old, None if new is missing else new)
    changed_classes = [k[: -len("class_path")] for k in diffs if k.endswith("class_path")]
    return {
        k: v
        for k, v in diffs.items()
        if not any(k.startswith(p) and not k.endswith("class_path") for p in changed_classes)
    }


def _describe(prefix: str, diffs: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(
        f"{prefix}{key}: checkpoint {old!r}, config {new!r}" for key, (old, new) in diffs.items()
    )


def _is_child_rank() -> bool:
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def _rank_zero_print(message: str) -> None:
    if not _is_child_rank():
        print(f"textvision: {message}", file=sys.stderr, flush=True)


def _class(path: str | None):
    if not path:
        return None
    module, _, name = path.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None


def _checkpoint_callbacks(trainer_config: Any) -> list[Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    out = []
    for callback in trainer_config.get("callbacks") or []:
        cls = _class(callback.get("class_path") if hasattr(callback, "get") else None)
        if isinstance(cls, type) and issubclass(cls, ModelCheckpoint):
            out.append(callback)
    return out


def _loggers(trainer_config: Any) -> list[Any]:
    loggers = trainer_config.get("logger")
    if isinstance(loggers, list):
        return [lg for lg in loggers if hasattr(lg, "get") and lg.get("class_path")]
    if hasattr(loggers, "get") and loggers.get("class_path"):
        return [loggers]
    return []


_VERSION = re.compile(r"version_(\d+)$")


def _run_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)]


def _new_run_folder(root: Path) -> Path:
    numbers = [int(_VERSION.match(p.name).group(1)) for p in _run_folders(root)]  # type: ignore[union-attr]
    number = max(numbers, default=-1) + 1
    while True:
        candidate = root / f"version_{number}"
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:  # another run took it first
            number += 1


# ------------------------------------------------------------------------------------------ CLI
class TextVisionCLI(LightningCLI):
    """LightningCLI with the project's model class and data modules in subclass mode, run folders,
    and checkpoints that supply weights to the config given (see the module docstring)."""

    def __init__(self, args: ArgsType = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self.run_dir: Path | None = None
        self._checkpoint_run_dir: Path | None = None
        self._checkpoint_meta: dict[str, Any] = {}
        super().__init__(
            TextVisionModule,
            LightningDataModule,
            subclass_mode_model=False,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    # -- which config: the one given -------------------------------------------------------
    def _subcommand_config(self) -> Any:
        sub = self.config.get("subcommand")
        return self.config[sub] if sub else self.config

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's, which overwrites the model config with the checkpoint's."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        config = self.config[sub]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            found = self._find_last(config)
            if found is None:
                where = ", ".join(str(p) for p in self._last_search_dirs(config)) or "(no checkpoint folder)"
                if sub != "fit":
                    raise CheckpointConfigError(f"--ckpt_path last: no last*.ckpt in {where}")
                _rank_zero_print(f"--ckpt_path last: no checkpoint in {where}; starting a new run")
                config.ckpt_path = None
                return
            path = found
        else:
            path = Path(str(ckpt_path))
            if not path.is_file():
                return  # "best", "hpc", a sharded folder or a missing file: Lightning's to resolve
        self._check_checkpoint(sub, config, path)
        config.ckpt_path = str(path)
        if path.parent.name == "checkpoints" and _VERSION.match(path.parent.parent.name):
            self._checkpoint_run_dir = path.parent.parent
        step = self._checkpoint_meta.get("global_step")
        verb = "resuming from" if sub == "fit" else "weights from"
        _rank_zero_print(f"{verb} {path}" + (f" (step {step})" if step is not None else ""))

    def _last_search_dirs(self, config: Any) -> list[Path]:
        trainer = config.trainer
        dirs: list[Path] = []
        if os.environ.get(RUN_DIR_ENV) and _is_child_rank():
            dirs.append(Path(os.environ[RUN_DIR_ENV]) / "checkpoints")
        else:
            root = Path(trainer.get("default_root_dir") or ".")
            dirs += sorted(p / "checkpoints" for p in _run_folders(root))
            dirs.append(root / "checkpoints")
        for callback in _checkpoint_callbacks(trainer):
            dirpath = callback.get("init_args", {}).get("dirpath") if callback.get("init_args") else None
            if dirpath:
                dirs.append(Path(str(dirpath)))
        return [d for d in dict.fromkeys(dirs)]

    def _find_last(self, config: Any) -> Path | None:
        candidates = [p for d in self._last_search_dirs(config) if d.is_dir() for p in d.glob("last*.ckpt")]
        return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None

    def _check_checkpoint(self, sub: str, config: Any, path: Path) -> None:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # a corrupt or foreign file: say which, in one line
            raise CheckpointConfigError(f"cannot read checkpoint {path}: {error}") from error
        if not isinstance(ckpt, dict):
            raise CheckpointConfigError(f"{path} is not a Lightning checkpoint")
        self._checkpoint_meta = {"global_step": ckpt.get("global_step")}
        trained = dict(ckpt.get("hyper_parameters") or {})
        model_diffs = config_differences(trained, config.get("model")) if trained else {}
        if sub == "fit":
            refused = {
                k: v for k, v in model_diffs.items() if k.split(".")[-1] not in RESUME_SAFE_MODEL_SETTINGS
            }
            data_refused = {}
            trained_data = ckpt.get("datamodule_hyper_parameters")
            data = config.get("data")
            if trained_data and data is not None and hasattr(data, "get") and data.get("init_args"):
                data_refused = {
                    k: v
                    for k, v in config_differences(trained_data, data.get("init_args")).items()
                    if k.split(".")[-1] not in RESUME_SAFE_DATA_SETTINGS
                }
            if refused or data_refused:
                detail = "; ".join(
                    s for s in (_describe("model.", refused), _describe("data.init_args.", data_refused)) if s
                )
                raise CheckpointConfigError(
                    f"cannot resume from {path}: it was trained with other settings ({detail}); "
                    "resume with the config it was trained with, or start a new run without --ckpt_path"
                )
            return
        refused, accepted = {}, {}
        for key, value in model_diffs.items():
            # any part of the path: `...scorer.class_path` is the scorer, given as a class
            allowed = not EVAL_TIME_SETTINGS.isdisjoint(key.split(".")) or key in OPTIMIZER_SETTINGS
            (accepted if allowed else refused)[key] = value
        if refused:
            raise CheckpointConfigError(
                f"{path} does not fit this config: {_describe('model.', refused)} "
                "(these change the model the weights belong to; use the training config for them)"
            )
        for key, (old, new) in accepted.items():
            if key.split(".")[-1] not in OPTIMIZER_SETTINGS:
                _rank_zero_print(
                    f"using this config's model.{key}={new!r} (the checkpoint was trained with {old!r})"
                )

    # -- run folders -------------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        trainer = config.trainer
        # (namespace, key) of every path to place: "{run_dir}" in a logger's save_dir or a
        # callback's dirpath, and a ModelCheckpoint without dirpath
        slots: list[tuple[Any, str]] = []
        for logger in _loggers(trainer):
            args = logger.get("init_args")
            if args is not None and RUN_DIR_TOKEN in str(args.get("save_dir") or ""):
                slots.append((args, "save_dir"))
        checkpoints = {id(cb) for cb in _checkpoint_callbacks(trainer)}
        for callback in trainer.get("callbacks") or []:
            args = callback.get("init_args") if hasattr(callback, "get") else None
            dirpath = None if args is None else args.get("dirpath")
            if RUN_DIR_TOKEN in str(dirpath or ""):
                slots.append((args, "dirpath"))
            elif id(callback) in checkpoints and not dirpath:
                if args is None:
                    callback.init_args = args = type(callback)()
                args.dirpath = f"{RUN_DIR_TOKEN}/checkpoints"
                slots.append((args, "dirpath"))
        if not slots:
            return  # every path is given: nothing to place
        run_dir = self._choose_run_dir(trainer)
        self.run_dir = run_dir
        os.environ[RUN_DIR_ENV] = str(run_dir)  # Lightning's DDP children inherit it
        trainer.default_root_dir = str(run_dir)
        for args, key in slots:
            args[key] = str(args[key]).replace(RUN_DIR_TOKEN, str(run_dir))
        _rank_zero_print(f"run folder {run_dir}")

    def _choose_run_dir(self, trainer: Any) -> Path:
        if _is_child_rank() and os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        if self._checkpoint_run_dir is not None:
            return self._checkpoint_run_dir
        root = Path(trainer.get("default_root_dir") or "runs")
        if not _is_child_rank():
            return _new_run_folder(root)
        # an external launcher (torchrun, srun) started every rank: name the run by its job
        job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
        if not job:
            raise CheckpointConfigError(
                "this rank cannot tell which run folder rank 0 made: give the loggers' save_dir and "
                "the checkpoint dirpath explicitly, or launch through Lightning (trainer.devices)"
            )
        run_dir = root / f"version_{job}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir


class _ParseOnly(TextVisionCLI):
    """``TextVisionCLI`` that stops after parsing: nothing is built, no run folder made."""

    def before_instantiate_classes(self) -> None:  # TextVisionCLI's makes the run folder
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_config(args: list[str]) -> tuple[Any, str]:
    """``(config, yaml)``: the config ``TextVisionCLI(args=args, run=False)`` would build from — the
    ``-c`` files merged in order and the flags on top, validated by its own parser — without
    building anything, and that config as the YAML ``textvision fit -c`` reads back."""
    import warnings

    with warnings.catch_warnings():
        # LightningCLI warns when args are given while sys.argv holds a calling tool's own flags.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        cli = _ParseOnly(args=list(args), run=False)
    return cli.config, cli.parser.dump(cli.config, skip_unset=False)


def cli_main(args: ArgsType = None) -> TextVisionCLI | dict | int | None:
    """Entry point of the ``textvision`` console script, also callable with an argument list.

    From the console (``args=None``) it returns ``None`` or an exit code, so the console script
    exits 0 on success; with ``args`` it returns the :class:`TextVisionCLI`, the demo's metrics
    or the evaluator's result dict, for tests and notebooks.
    """
    console = args is None
    argv = sys.argv[1:] if console else args
    if isinstance(argv, list | tuple) and argv and argv[0] in ("demo", "eval"):
        rest = list(argv[1:])
        if argv[0] == "demo":
            from textvision.train.demo import main as demo_main

            metrics = demo_main(rest)
            return None if console else metrics
        if console:
            from textvision.eval.cli import cli_main as eval_cli_main

            return eval_cli_main(rest)
        from textvision.eval.cli import main as eval_main

        return eval_main(rest)
    if not console:
        return TextVisionCLI(args=argv)
    # From the console LightningCLI reads sys.argv itself (passing it again as ``args`` makes it
    # warn about receiving both).
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from textvision.train import checkpointing

    try:
        TextVisionCLI(args=None)
    except CheckpointConfigError as error:
        print(f"textvision: error: {error}", file=sys.stderr)
        return 2
    except SIGTERMException:
        signum = checkpointing.INTERRUPTED_BY or signal.SIGTERM
        print(
            f"textvision: stopped by {signal.Signals(signum).name} at the end of a step; "
            "resume with --ckpt_path last",
            file=sys.stderr,
        )
        return 128 + int(signum)
    return None


if __name__ == "__main__":
    sys.exit(cli_main())
