"""The README's and docs/*.md's every command, as a user types it (issue 11: "the README's every
command runs as written").

The commands are read from the ```bash blocks (``\\``-continued lines joined, comments dropped,
``a && b`` split) and from inline code that spells out a command (``python -m ...``,
``textvision ...``, ``PYTHONPATH=. textvision ...``, ``env -u X python -m ...``). Each one:

* ``pip ...``: only checked to be the documented install (``pip install [-q] -e ".[dev]"``);
* ``ruff``/``pytest``: on the path and in the ``dev`` extra, and the README's test line is the line
  ``.ci/run`` runs verbatim (CI runs it, so it is not run again here);
* ``python -m MODULE ...`` and ``textvision SUB ...``: the module (or the console script's entry
  point, from the installed metadata) resolves, every path into the repository exists, and the
  program's own parser accepts the arguments: the program is started in-process exactly as
  ``python -m``/the console script starts it (``runpy``/the entry point, ``sys.argv`` set) and
  stopped right after it parsed. An argparse program is stopped inside its ``parse_args`` /
  ``parse_known_args`` (after the real parse: options, choices, required arguments), its option
  strings compared with the command's, and arguments it forwards to LightningCLI (its epilog says
  so: the visualiser, the demo) parsed by ``train/cli.parse_config``; a LightningCLI program
  (``textvision fit/test/...``, ``python -m textvision.pretrain``) gets ``--print_config`` appended,
  which parses and validates the whole config without building anything;
* placeholders (``<ckpt>``, ``last.ckpt``, ``runs/.../last.ckpt``, ``DIR``, ``~/data/...``,
  ``x.png``, ``cat.png``, ``my.yaml``) become files under ``tmp_path``; ``my.yaml`` is the README's
  own overlay block and ``my_fusions.py`` a user module written the way the README's three steps
  describe, in the user's working folder: importable only where the command itself makes it so
  (``PYTHONPATH=.``, or ``python -m``, which puts the working folder on the path), as in a shell.

The short ones also run as written in a subprocess (``--dry-run``, ``--help``, ``--print_config``
commands, and the documented ``textvision fit -c configs/demo.yaml`` with ``--print_config``);
everything else trains, benchmarks, needs a GPU, a checkpoint or downloaded data, and is checked
statically only: each test id says which and why.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
INSTALL_COMMANDS = ('pip install -e ".[dev]"', 'pip install -q -e ".[dev]"')
#: inline code that spells out a command (other inline code names things)
INLINE_COMMAND = re.compile(r"^(python -m |textvision |env |PYTHONPATH=|pip )")
#: options whose value a command writes (not checked to exist)
OUTPUT_OPTIONS = {"--out", "--output_dir", "--export_dir"}
#: options whose value is a config file of the repository (checked to exist)
CONFIG_OPTIONS = {"-c", "--config", "--pretraining"}
#: why a program's documented commands are only checked statically (the test ids say it)
STATIC_REASON = {
    "textvision demo": "trains the demo, 25 min",
    "textvision fit": "trains",
    "textvision test": "needs a trained checkpoint",
    "textvision validate": "needs a trained checkpoint",
    "textvision eval": "needs a checkpoint and downloaded benchmark data",
    "textvision.pretrain": "pretrains the ViT, minutes",
    "textvision.visualize": "needs a checkpoint; builds the pretrained demo ViT",
    "textvision.bench.perf.gpu_check": "needs a GPU",
    "textvision.bench.perf.kernels_compile_check": "compiles every kernel variant with ptxas, minutes",
    "textvision.bench.perf.kernels": "benchmark, minutes",
    "textvision.bench.perf.encoder": "benchmark, minutes",
    "textvision.bench.perf.cost_model": "writes results/",
    "textvision.bench.perf.data": "benchmark + patch probe, minutes",
    "textvision.bench.perf.train_step": "benchmark, minutes",
    "textvision.bench.experiments.encoder_sweep": "experiment, hours",
    "textvision.bench.experiments.linear_probe": "experiment, pretrains, minutes",
}
SHORT_FLAGS = ("--dry-run", "--help", "--print_config")


# ------------------------------------------------------------------------------ extraction
@dataclass(frozen=True)
class Command:
    where: str  # "docs/kernels.md:12"
    text: str  # one command, as written (continuations joined, comment dropped)
    inline: bool  # from inline code rather than a ```bash block

    @property
    def tokens(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def _without_comment(text: str) -> str:
    """``text`` as written, less a trailing ``# comment`` (a ``#`` outside quotes)."""
    tokens = shlex.split(text, comments=True)
    for cut in [m.start() for m in re.finditer(r"\s#", text)]:
        if shlex.split(text[:cut]) == tokens:
            return text[:cut].strip()
    return text.strip()


def _split_and(where: str, line: str, inline: bool) -> list[Command]:
    """``a && b`` as two commands, each as written (a ``&&`` outside quotes splits)."""
    parts, start = [], 0
    for match in re.finditer(r"&&", line):
        head = line[start : match.start()]
        try:
            shlex.split(head)
        except ValueError:  # inside quotes
            continue
        parts.append(head)
        start = match.end()
    parts.append(line[start:])
    texts = [_without_comment(part) for part in parts]
    return [Command(where, text, inline) for text in texts if text]


def extract_commands(path: Path) -> list[Command]:
    rel = path.relative_to(REPO).as_posix()
    lines = path.read_text().splitlines()
    commands: list[Command] = []
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence == "bash":
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            commands += _split_and(f"{rel}:{start}", pending + stripped, inline=False)
            pending = ""
        elif fence is None:
            for span in re.findall(r"`([^`]+)`", line):
                if INLINE_COMMAND.match(span):
                    commands += _split_and(f"{rel}:{number}", span, inline=True)
    assert not pending, f"{rel}: a ```bash block ends in a continued line"
    return commands


def all_commands() -> list[Command]:
    seen: dict[str, Command] = {}
    for path in DOCS:
        for command in extract_commands(path):
            seen.setdefault(command.text, command)
    return list(seen.values())


COMMANDS = all_commands()


def _environment(tokens: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """``(VAR=value settings, variables unset by env -u, the command's own tokens)``."""
    settings, unset = {}, []
    tokens = list(tokens)
    if tokens and tokens[0] == "env":
        tokens.pop(0)
        while tokens and tokens[0] == "-u":
            tokens.pop(0)
            unset.append(tokens.pop(0))
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        settings[name] = value
    return settings, unset, tokens


def program_of(command: Command) -> str:
    """``"textvision SUB"``, the module of ``python -m``, or the tool's name."""
    _, _, tokens = _environment(command.tokens)
    if tokens[:2] == ["python", "-m"]:
        return tokens[2]
    if tokens[0] == "textvision":
        return f"textvision {tokens[1]}" if len(tokens) > 1 else "textvision"
    return tokens[0]


def is_mention(command: Command) -> bool:
    """Inline ``textvision SUB`` with nothing after it names the sub-command, it is not a command."""
    return command.inline and command.tokens[0] == "textvision" and len(command.tokens) == 2


def runs_here(command: Command) -> bool:
    return any(flag in command.tokens for flag in SHORT_FLAGS)


def _id(command: Command) -> str:
    if command.tokens[0] == "pip":
        how = "install form only"
    elif command.tokens[0] in ("ruff", "pytest"):
        how = "run by .ci/run"
    elif is_mention(command):
        how = "sub-command mention"
    elif runs_here(command):
        how = "parsed, and run below"
    else:
        how = "parsed only: " + STATIC_REASON.get(program_of(command), "long (not marked short)")
    return f"{command.where} {command.text} [{how}]"


PROGRAMS = [c for c in COMMANDS if c.tokens[0] not in ("pip", "ruff", "pytest")]


# ------------------------------------------------------------------------------ placeholders
USER_FUSIONS = (Path(__file__).parent / "assets" / "user_fusion.py").read_text()  # README step 1


def readme_overlay() -> str:
    """The README's own overlay YAML (the ```yaml block that names ``my_fusions``)."""
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    overlays = [textwrap.dedent(b) for b in blocks if "my_fusions." in b]
    assert len(overlays) == 1, "README.md: expected one ```yaml overlay naming my_fusions"
    return overlays[0]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """What a user has beside the repository: ``my_fusions.py``, ``my.yaml``, an image, a
    checkpoint file, an export folder and ``~/data``."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_fusions.py").write_text(USER_FUSIONS)
    (folder / "my.yaml").write_text(readme_overlay())
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 40, 40)).save(folder / "x.png")
    (folder / "last.ckpt").write_bytes(b"")  # only parsed: nothing opens it before the run
    return folder


@pytest.fixture
def fresh_user_module():
    """``my_fusions`` importable only where the command makes it so, not from an earlier test."""
    sys.modules.pop("my_fusions", None)
    yield
    sys.modules.pop("my_fusions", None)


def substitute(tokens: list[str], folder: Path) -> list[str]:
    out = []
    for token in tokens:
        if token in ("<ckpt>", "last.ckpt") or (token.startswith("runs/") and token.endswith(".ckpt")):
            token = str(folder / "last.ckpt")
        elif token in ("x.png", "cat.png"):
            token = str(folder / "x.png")
        elif token == "my.yaml":
            token = str(folder / "my.yaml")
        elif token == "DIR":
            token = str(folder / "export")
        elif token.startswith("~/"):
            path = folder / "home" / token[2:]
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("[]")
            else:
                path.mkdir(parents=True, exist_ok=True)
            token = str(path)
        out.append(token)
    return out


def repository_paths(tokens: list[str]) -> list[str]:
    """The arguments that point into the repository and must exist (outputs excepted)."""
    top = {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
    paths = []
    for previous, token in zip(["", *tokens], tokens, strict=False):
        if previous in OUTPUT_OPTIONS or token.startswith("-") or token.startswith("runs/"):
            continue
        in_repo = "/" in token and token.split("/")[0] in top
        if in_repo or (previous in CONFIG_OPTIONS and token != "my.yaml"):
            paths.append(token)
    return paths


# ------------------------------------------------------------------------------ parsing in-process
class _Parsed(BaseException):  # BaseException: passes the programs' own `except Exception`
    def __init__(self, parser: argparse.ArgumentParser, namespace, extras: list[str]) -> None:
        super().__init__("parsed")
        self.parser, self.namespace, self.extras = parser, namespace, extras


class _LightningCLIProgram(BaseException):
    pass


def _start(program: str, args: list[str]) -> None:
    """Start ``program`` in-process the way ``python -m``/the console script does."""
    if program == "textvision":  # the console script: its entry point, as pip installed it
        (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "textvision"]
        sys.argv = ["textvision", *args]
        code = entry.load()()
        if code not in (0, None):
            raise SystemExit(code)
    else:
        sys.argv = [program, *args]
        runpy.run_module(program, run_name="__main__", alter_sys=True)


def parse(program: str, args: list[str], monkeypatch) -> tuple[str, object, str]:
    """``("argparse", _Parsed, stdout)``, ``("lightning", the printed config, stderr)`` or
    ``("help", None, stdout)``; a failed parse fails the test with the program's own message."""
    import jsonargparse
    from lightning.pytorch.cli import LightningCLI

    original_known = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        if isinstance(self, jsonargparse.ArgumentParser):
            return original_known(self, args, namespace)
        namespace, extras = original_known(self, args, namespace)
        raise _Parsed(self, namespace, extras)

    def parse_args(self, args=None, namespace=None):
        if isinstance(self, jsonargparse.ArgumentParser):
            return original_parse(self, args, namespace)
        namespace, extras = original_known(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise _Parsed(self, namespace, [])

    def lightning_parse(self, *a, **k):
        raise _LightningCLIProgram()

    original_parse = argparse.ArgumentParser.parse_args
    stdout, stderr = io.StringIO(), io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", list(sys.argv))
        patch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        patch.setattr(LightningCLI, "parse_arguments", lightning_parse)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                _start(program, args)
        except _Parsed as parsed:
            return "argparse", parsed, stdout.getvalue()
        except _LightningCLIProgram:
            pass
        except SystemExit as stop:
            if stop.code in (0, None) and "--help" in args:
                return "help", None, stdout.getvalue()
            pytest.fail(f"{program} {shlex.join(args)}: exit {stop.code}: {_error(stderr.getvalue())}")
        else:
            if "--help" in args:  # a program that turns argparse's exit into a return code
                return "help", None, stdout.getvalue()
            pytest.fail(f"{program} ran to the end without parsing its arguments")
    # a LightningCLI: --print_config parses and validates everything, builds nothing
    stdout, stderr = io.StringIO(), io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", list(sys.argv))
        with pytest.raises(SystemExit) as stop:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                _start(program, [*args, "--print_config"])
    assert stop.value.code in (0, None), f"{program} {shlex.join(args)}: {_error(stderr.getvalue())}"
    return "lightning", yaml.safe_load(stdout.getvalue()), stderr.getvalue()


def _error(stderr: str) -> str:
    """A parser's message without the usage it prints first."""
    at = stderr.find("error:")
    return (stderr[at:] if at >= 0 else stderr)[-2000:]


def _pretraining_cache() -> list[str]:
    folder = Path(os.environ["TEXTVISION_CACHE"]) / "pretrain"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ------------------------------------------------------------------------------ tests
def test_the_docs_hold_the_commands_a_user_needs():
    """The extraction is not silently empty: the README's headline commands are found."""
    texts = {c.text for c in COMMANDS}
    assert {"textvision demo", 'pip install -e ".[dev]"', "ruff check .", "pytest -q"} <= texts
    assert any(c.where.startswith("docs/") for c in COMMANDS)
    assert any(runs_here(c) for c in COMMANDS), "no short command to run"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.tokens[0] == "pip"], ids=_id)
def test_pip_commands_are_the_documented_install(command):
    assert command.text in INSTALL_COMMANDS, f"{command.where}: {command.text}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.tokens[0] in ("ruff", "pytest")], ids=_id)
def test_tool_commands_are_installed_by_the_dev_extra_and_run_by_ci(command):
    tool = command.tokens[0]
    dev = [r for r in metadata.requires("textvision") or [] if re.search(r"extra == .dev.", r)]
    assert any(re.match(rf"{tool}\b", requirement) for requirement in dev), f"{tool} not in the dev extra"
    assert shutil.which(tool), f"{tool} not on PATH"
    ci = [
        c.text
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip()
        for c in _split_and(".ci/run", line, inline=False)
    ]
    assert command.text in ci, f"{command.text!r} is not what .ci/run runs"


@pytest.mark.parametrize("command", PROGRAMS, ids=_id)
def test_command_parses(command, user_folder, fresh_user_module, monkeypatch):
    settings, unset, tokens = _environment(command.tokens)
    if tokens[:2] == ["python", "-m"]:
        program, args = tokens[2], tokens[3:]
        spec = util.find_spec(program)
        assert spec is not None, f"no module {program}"
        if spec.submodule_search_locations is not None:
            assert util.find_spec(f"{program}.__main__"), f"{program} is a package without __main__"
    elif tokens[0] == "textvision":
        program, args = "textvision", tokens[1:]
    else:
        pytest.fail(f"{command.where}: a command of an unknown kind: {command.text} (extend this test)")
    for path in repository_paths(args):
        assert (REPO / path).exists(), f"{command.where}: {path} is not in the repository"

    monkeypatch.chdir(REPO)
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        assert name == "PYTHONPATH", f"{command.where}: unexpected setting {name}"
        for entry in reversed(value.split(os.pathsep)):  # "." is the user's folder beside the repo
            monkeypatch.syspath_prepend(str(user_folder) if entry == "." else entry)
    if tokens[:2] == ["python", "-m"]:  # python -m puts the working folder (the user's) first
        monkeypatch.syspath_prepend(str(user_folder))
    args = substitute(args, user_folder)
    if is_mention(command):
        args = [*args, "--help"]
    cache_before = _pretraining_cache()

    kind, result, printed = parse(program, args, monkeypatch)

    if kind == "help":
        assert "usage" in printed.lower(), f"{command.where}: {program} {args[0]} --help printed no usage"
    elif kind == "argparse":
        parser, extras = result.parser, result.extras
        options = {t.split("=")[0] for t in args if t.startswith("-") and not re.match(r"^-\d", t)}
        unknown = sorted(options - set(parser._option_string_actions))
        forwards = "LightningCLI" in (parser.epilog or "")
        if unknown:
            assert forwards, f"{command.where}: {parser.prog} does not accept {unknown}"
        if extras:
            assert forwards, f"{command.where}: {parser.prog} ignores {extras}"
            from textvision.train.cli import parse_config
            from textvision.train.demo import default_config

            config = getattr(result.namespace, "config", None) or default_config()
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                    parse_config(["-c", str(config), *extras])
            except SystemExit:
                pytest.fail(f"{command.where}: LightningCLI refuses {extras}: {_error(stderr.getvalue())}")
    else:
        assert isinstance(result, dict) and "model" in result, f"{command.where}: printed no config"
    assert _pretraining_cache() == cache_before, "parsing started the vision pretraining"


# ------------------------------------------------------------------------------ run as written
def _to_run() -> list[pytest.param]:
    short = [c for c in PROGRAMS if runs_here(c)]
    # the first documented plain `textvision fit -c configs/X.yaml`, with --print_config appended
    fit = [c for c in PROGRAMS if len(c.tokens) == 4 and c.tokens[:3] == ["textvision", "fit", "-c"]]
    assert fit, "no plain `textvision fit -c configs/X.yaml` documented"
    short.append(Command(fit[0].where, fit[0].text + " --print_config", fit[0].inline))
    return [pytest.param(c, id=f"{c.where} {c.text}") for c in short]


def _executable(name: str) -> str:
    """``python``/``textvision`` of this interpreter's environment (what PATH gives once it is
    activated), else from PATH."""
    if name == "python":
        return sys.executable
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


@pytest.mark.parametrize("command", _to_run())
def test_short_command_runs_as_written(command, user_folder, tmp_path):
    settings, unset, tokens = _environment(command.tokens)
    tokens = substitute(tokens, user_folder)
    out = tmp_path / "out"
    tokens = [
        str(out) if previous in OUTPUT_OPTIONS else token
        for previous, token in zip(["", *tokens], tokens, strict=False)
    ]
    tokens[0] = _executable(tokens[0])
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", *unset)}  # a user's shell
    env.update(settings, OMP_NUM_THREADS="1")
    cache_before = _pretraining_cache()
    done = subprocess.run(tokens, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command.text}: exit {done.returncode}\n{done.stderr[-3000:]}"
    if "--print_config" in tokens:
        assert "model" in yaml.safe_load(done.stdout)
    if "--dry-run" in tokens and "gpu_check" in command.text:
        report = json.loads((out / "gpu_check.json").read_text())
        assert report["ok"], report
    assert _pretraining_cache() == cache_before, "the command started the vision pretraining"
