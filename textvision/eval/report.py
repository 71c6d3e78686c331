"""Result files: the full JSON (settings, aggregate and per-item) and a markdown summary table.

Accuracies are stored as fractions in the JSON and shown as percentages (one decimal, as the
published tables) in the markdown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["format_markdown", "result_stem", "write_report"]

#: how the headline metric (a :mod:`textvision.eval.metrics` name) reads in a title
_METRIC_LABELS = {"acc": "accuracy", "pair_acc": "pair accuracy", "average": "average"}


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _settings_lines(result: dict[str, Any]) -> list[str]:
    run = result.get("run", {})
    dataset = result.get("dataset", {})
    lines = [
        f"- model: `{run.get('model', '?')}`",
        f"- checkpoint: `{run.get('checkpoint') or 'none (model passed in)'}`",
    ]
    if "mode" in result:
        lines.append(f"- mode: `{result['mode']}`; scorers: {', '.join(f'`{p}`' for p in result['parsers'])}")
    if "errata" in dataset:
        state = dataset.get("file_labels_at_errata_items")
        lines.append(
            f"- MMVP label errata applied: **{'yes' if dataset['errata'] else 'no'}**"
            + (f" (file labels at 99/100/279/280: {state})" if state else "")
        )
    for key in ("prompt_template", "text_template", "prompt"):
        if key in dataset:
            lines.append(f"- {key.replace('_', ' ')}: `{json.dumps(dataset[key])[1:-1]}`")
    for key in ("skipped_missing_images", "skipped_not_one_image"):
        if dataset.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {len(dataset[key])}")
    return lines


def _multiple_choice_tables(result: dict[str, Any]) -> list[str]:
    has_pairs = any("pair_acc" in m for m in result["metrics"].values())
    head = "| scorer | accuracy % | correct / total |" + (
        " pair accuracy % | pairs correct / pairs |" if has_pairs else ""
    )
    rule = "|---|---:|---:|" + ("---:|---:|" if has_pairs else "")
    lines = [head, rule]
    for scorer, m in result["metrics"].items():
        row = f"| {scorer} | {_pct(m['acc'])} | {m['n_correct']} / {m['n']} |"
        if has_pairs:
            row += f" {_pct(m.get('pair_acc'))} | {m.get('n_pairs_correct', 0)} / {m.get('n_pairs', 0)} |"
        lines.append(row)
    headline = result["metrics"][result["headline"]["scorer"]].get("by_category", {})
    if headline:
        lines += ["", f"Per category ({result['headline']['scorer']}):", ""]
        lines.append("| category | accuracy % | n |" + (" pair accuracy % | pairs |" if has_pairs else ""))
        lines.append("|---|---:|---:|" + ("---:|---:|" if has_pairs else ""))
        for category, m in headline.items():
            row = f"| {category} | {_pct(m['acc'])} | {m['n']} |"
            if has_pairs:
                row += f" {_pct(m.get('pair_acc'))} | {m.get('n_pairs', 0)} |"
            lines.append(row)
    return lines


def _mmvp_vlm_tables(result: dict[str, Any]) -> list[str]:
    m = result["metrics"]
    lines = ["| category | pair accuracy % | pairs correct / pairs |", "|---|---:|---:|"]
    for category, c in m["by_category"].items():
        lines.append(f"| {category} | {_pct(c['pair_acc'])} | {c['n_pairs_correct']} / {c['n_pairs']} |")
    lines.append(f"| **average of {m['n_categories']} categories** | **{_pct(m['average'])}** | |")
    lines += [
        "",
        f"All pairs: {_pct(m['pair_acc'])} % ({m['n_pairs_correct']} / {m['n_pairs']}); "
        f"statements: {_pct(m['statement_acc'])} %.",
    ]
    return lines


def format_markdown(result: dict[str, Any]) -> str:
    """A markdown summary: headline, settings, the metrics table(s)."""
    headline = result["headline"]
    label = _METRIC_LABELS.get(headline["metric"], headline["metric"])
    title = f"## {result['benchmark']}: {label} {_pct(headline['value'])} %"
    body = _mmvp_vlm_tables(result) if result["benchmark"] == "mmvp_vlm" else _multiple_choice_tables(result)
    return "\n".join([title, "", *_settings_lines(result), "", *body, ""])


def result_stem(result: dict[str, Any]) -> str:
    """File name stem: ``<benchmark>-<mode>`` (``mmvp_vlm`` has no mode), errata marked."""
    stem = result["benchmark"] + (f"-{result['mode']}" if "mode" in result else "")
    if result.get("dataset", {}).get("errata"):
        stem += "-errata"
    return stem


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(format_markdown(result), encoding="utf-8")
    return json_path, md_path
