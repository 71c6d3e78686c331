"""Analytic cost model: FLOPs and minimum HBM bytes per kernel call and per encoder forward.

Counting conventions (those of FlashAttention and ``../shared/research/kernels.md`` §1):

- A matmul of ``(M, K) @ (K, N)`` costs ``2·M·K·N`` FLOPs; softmax, norms and activations are
  not counted (they are bandwidth, not FLOPs, on a GPU).
- Attention forward (non-causal) costs ``4·B·H·Nq·Nk·D`` FLOPs (``QKᵀ`` and ``PV``); the
  backward costs 2.5× the forward (2.0 for the four backward matmuls + 0.5 to recompute ``P``).
- Minimum bytes of a fused attention call are the bytes that must cross HBM once: Q, K, V and O
  in the input dtype, the fp32 log-sum-exp per query row, the bool key mask, and the fp32
  relevance vector when it is requested. The backward reads Q, K, V, O, dO, LSE and writes dQ,
  dK, dV.
- The relevance side output of ``cross_attention`` recomputes ``QKᵀ`` once more
  (``2·B·H·Nq·Nk·D`` FLOPs) on either path of ``textvision.kernels``: the **one-launch** path
  (text in one tile, enough ``(b, h)`` programs to fill the GPU) re-reads Q from L2, so its extra
  HBM traffic is only the float32 per-head partials (written and read back: ``8·B·H·Nq`` bytes)
  and the relevance vector; the **two-pass** path re-reads Q and K from HBM plus per-tile column
  statistics.

Each fusion variant counts its own FLOPs (``Fusion.flops``, beside its forward); the encoder
model adds them to the plain blocks' and its table has a row per registered variant.

The roofline time of a call is ``max(flops / peak_flops, bytes / peak_bandwidth)``; a measured
time gives the fraction of that bound reached. Ceilings for an H100 SXM5 are the spec numbers
(989 TFLOP/s dense bf16, 3.35 TB/s) that the kernels issue asks to report against.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from textvision.fusion import FUSIONS, Fusion, attention_flops, resolve_fusion

__all__ = [
    "H100_SXM",
    "Cost",
    "Roofline",
    "cross_attention_cost",
    "encoder_forward_cost",
    "kept_patch_count",
    "mutual_attention_cost",
]


@dataclass(frozen=True)
class Cost:
    """FLOPs and minimum bytes moved through device memory."""

    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP per byte."""
        return self.flops / self.bytes if self.bytes else math.inf


@dataclass(frozen=True)
class Roofline:
    """A device's ceilings: peak FLOP/s and peak memory bandwidth in bytes/s."""

    name: str
    peak_flops: float
    peak_bandwidth: float

    def bound_seconds(self, cost: Cost) -> float:
        """The shortest time the roofline allows for ``cost``."""
        return max(cost.flops / self.peak_flops, cost.bytes / self.peak_bandwidth)

    def fraction_of_roofline(self, cost: Cost, measured_seconds: float) -> float:
        """Roofline time over measured time: 1.0 means the kernel runs at the bound."""
        if measured_seconds <= 0:
            raise ValueError(f"measured_seconds must be positive, got {measured_seconds}")
        return self.bound_seconds(cost) / measured_seconds


H100_SXM = Roofline("H100 SXM5 (spec, bf16 dense)", peak_flops=989e12, peak_bandwidth=3.35e12)


def _attention_flops(batch: int, heads: int, n_query: int, n_key: int, head_dim: int) -> float:
    return attention_flops(batch=batch, heads=heads, n_query=n_query, n_key=n_key, head_dim=head_dim)


def cross_attention_cost(
    *,
    batch: int,
    heads: int,
    n_img: int,
    n_text: int,
    head_dim: int,
    dtype_bytes: int = 2,
    backward: bool = False,
    relevance: bool = False,
    relevance_path: str = "one_launch",
) -> Cost:
    """Cost of one ``cross_attention`` call: image queries ``(B,H,N_img,D)`` over text ``(B,H,T,D)``.

    With ``backward=True`` the cost of the backward alone (dq, dk, dv) is returned.
    ``relevance_path`` is ``"one_launch"`` or ``"two_pass"`` (see the module docstring).
    """
    if relevance_path not in ("one_launch", "two_pass"):
        raise ValueError(f"relevance_path must be 'one_launch' or 'two_pass', got {relevance_path!r}")
    q = batch * heads * n_img * head_dim * dtype_bytes
    kv = batch * heads * n_text * head_dim * dtype_bytes
    lse = 4.0 * batch * heads * n_img
    mask = float(batch * n_text)
    flops = _attention_flops(batch, heads, n_img, n_text, head_dim)
    if backward:
        # reads q, k, v, o, do, lse, mask; writes dq, dk, dv
        return Cost(2.5 * flops, 3 * q + 2 * kv + lse + mask + q + 2 * kv)
    cost = Cost(flops, q + 2 * kv + q + lse + mask)
    if relevance:
        rel_out = 4.0 * batch * n_img
        if relevance_path == "one_launch":
            extra_bytes = 8.0 * batch * heads * n_img + rel_out
        else:
            column_stats = 2 * 2 * 4.0 * batch * heads * n_text * math.ceil(n_img / 64)
            extra_bytes = q + kv + lse + mask + column_stats + rel_out
        cost = cost + Cost(flops / 2, extra_bytes)
    return cost


def mutual_attention_cost(
    *,
    batch: int,
    heads: int,
    n_img: int,
    n_text: int,
    head_dim: int,
    dtype_bytes: int = 2,
    backward: bool = False,
) -> Cost:
    """Cost of one ``mutual_attention`` call: every query (image and text) over all N_img + T keys."""
    n_all = n_img + n_text
    qkvo = 4.0 * batch * heads * n_all * head_dim * dtype_bytes
    lse = 4.0 * batch * heads * n_all
    mask = float(batch * n_text)
    flops = _attention_flops(batch, heads, n_all, n_all, head_dim)
    if backward:
        return Cost(2.5 * flops, qkvo + qkvo / 4 + lse + mask + 3 * qkvo / 4)
    return Cost(flops, qkvo + lse + mask)


def kept_patch_count(
    n_patches: int, *, keep_tokens: int | None = None, keep_ratio: float | None = None
) -> int:
    """Number of patches pruning keeps: ``keep_tokens``, or ``ceil(keep_ratio · N)`` (EViT's rule)."""
    if (keep_tokens is None) == (keep_ratio is None):
        raise ValueError("give exactly one of keep_tokens and keep_ratio")
    if keep_tokens is not None:
        return max(1, min(n_patches, keep_tokens))
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(n_patches, math.ceil(keep_ratio * n_patches)))


def encoder_forward_cost(
    *,
    batch: int,
    depth: int,
    width: int,
    heads: int,
    n_patches: int,
    n_text: int,
    text_width: int | None = None,
    mlp_ratio: float = 4.0,
    class_token: bool = True,
    fusion: str | type[Fusion] | None = None,
    fusion_blocks: Sequence[int] | None = None,
    prune_at: Sequence[int] = (),
    keep_tokens: int | None = None,
    keep_ratio: float | None = None,
    dtype_bytes: int = 2,
) -> dict:
    """FLOPs of one text-aware ViT forward (patch embedding excluded), block by block.

    ``fusion`` is a registered short name or a :class:`~textvision.fusion.Fusion` subclass (None:
    the plain ViT, no block fused); the FLOPs of a fused block are the plain block's plus the
    variant's own ``Fusion.flops``. The text adapter (``text_width → width``, once per forward)
    is counted when ``text_width`` is given and a block is fused. Pruning after block ``i``
    (0-based, as in ``prune_at``) shrinks the patch count of every later block. Returns
    ``{"total_flops", "attention_flops", "blocks": [...]}`` where each block entry gives its
    token count and FLOPs split into self-attention, fusion and MLP.
    """
    if fusion is None:
        variant, fused = None, set()
    else:
        variant = resolve_fusion(fusion)  # ValueError naming the registered ones for an unknown name
        if not (isinstance(variant, type) and issubclass(variant, Fusion)):
            raise TypeError(f"the cost model counts a Fusion subclass's FLOPs, got {fusion!r}")
        fused = set(range(depth) if fusion_blocks is None else fusion_blocks)
    head_dim = width // heads
    hidden = int(width * mlp_ratio)
    n_keep = n_patches
    blocks = []
    total = attention_total = 0.0
    if fused and text_width is not None:
        total += 2.0 * batch * n_text * text_width * width  # text adapter, once
    for index in range(depth):
        n = n_keep + int(class_token)
        gemm = lambda rows, k, m: 2.0 * batch * rows * k * m
        self_attention = gemm(n, width, 3 * width) + gemm(n, width, width)
        attention = _attention_flops(batch, heads, n, n, head_dim)
        fusion_flops = 0.0
        if index in fused:
            own = variant.flops(batch=batch, tokens=n, text_tokens=n_text, dim=width, num_heads=heads)
            fusion_flops = own.total
            attention_total += own.attention
        mlp = gemm(n, width, hidden) + gemm(n, hidden, width)
        block_flops = self_attention + attention + fusion_flops + mlp
        attention_total += attention
        total += block_flops
        blocks.append(
            {
                "block": index,
                "tokens": n,
                "self_attention_flops": self_attention + attention,
                "fusion_flops": fusion_flops,
                "mlp_flops": mlp,
                "flops": block_flops,
            }
        )
        if index in set(prune_at):
            n_keep = kept_patch_count(n_keep, keep_tokens=keep_tokens, keep_ratio=keep_ratio)
    return {"total_flops": total, "attention_flops": attention_total, "blocks": blocks}


def _kernel_rows(roofline: Roofline) -> list[dict]:
    """The ViT-B/16 and ViT-L/14-336 kernel shapes of the kernels benchmark."""
    shapes = [
        ("ViT-B/16 @224", 64, 12, 197, 32),
        ("ViT-B/16 @224", 64, 12, 197, 77),
        ("ViT-L/14 @336", 32, 16, 577, 32),
        ("ViT-L/14 @336", 32, 16, 577, 77),
    ]
    rows = []
    for name, batch, heads, n_img, n_text in shapes:
        kernels = ("cross_attention", "cross_attention+relevance", "cross_attention+relevance (two-pass)")
        for kernel in (*kernels, "mutual_attention"):
            kwargs = dict(batch=batch, heads=heads, n_img=n_img, n_text=n_text, head_dim=64)
            if kernel == "mutual_attention":
                fwd, bwd = mutual_attention_cost(**kwargs), mutual_attention_cost(**kwargs, backward=True)
            else:
                relevance = "relevance" in kernel
                path = "two_pass" if "two-pass" in kernel else "one_launch"
                fwd = cross_attention_cost(**kwargs, relevance=relevance, relevance_path=path)
                bwd = cross_attention_cost(**kwargs, backward=True)
            rows.append(
                {
                    "model": name,
                    "kernel": kernel,
                    "B": batch,
                    "H": heads,
                    "N_img": n_img,
                    "T": n_text,
                    "fwd_gflop": fwd.flops / 1e9,
                    "fwd_mb": fwd.bytes / 1e6,
                    "fwd_flop_per_byte": fwd.intensity,
                    "fwd_roofline_us": roofline.bound_seconds(fwd) * 1e6,
                    "fwd_bwd_roofline_us": roofline.bound_seconds(fwd + bwd) * 1e6,
                }
            )
    return rows


def _encoder_rows() -> list[dict]:
    """ViT-S/16 @224 with T=32, the encoder benchmark's model: the plain ViT, then every
    registered fusion variant in all blocks, without and with pruning to 25% after block 4."""
    common = dict(batch=1, depth=12, width=384, heads=6, n_patches=196, n_text=32, text_width=384)
    settings: list[tuple[str, dict]] = [("plain ViT-S/16", dict(text_width=None))]
    for name in sorted(FUSIONS):
        settings.append((f"{name}, all blocks", dict(fusion=name)))
        settings.append(
            (f"{name} + prune to 25% after block 4", dict(fusion=name, prune_at=(4,), keep_ratio=0.25))
        )
    plain = encoder_forward_cost(**{**common, **settings[0][1]})["total_flops"]
    rows = []
    for name, kwargs in settings:
        cost = encoder_forward_cost(**{**common, **kwargs})
        rows.append(
            {
                "encoder": name,
                "gflop_per_image": cost["total_flops"] / 1e9,
                "ratio_to_plain": cost["total_flops"] / plain,
                "final_tokens": cost["blocks"][-1]["tokens"],
            }
        )
    return rows


def _attach_measured(rows: list[dict], results_dir: Path) -> None:
    """Put measured encoder times from ``results/encoder.json`` beside the analytic FLOPs, if present."""
    path = results_dir / "encoder.json"
    if not path.is_file():
        return
    measured = json.loads(path.read_text())
    times = measured.get("ms_per_image", {}) if isinstance(measured, dict) else {}
    for row in rows:
        for key, value in times.items():
            if key == row["encoder"]:
                row["measured_ms_per_image_cpu"] = value


def _markdown(kernel_rows: list[dict], encoder_rows: list[dict], roofline: Roofline) -> str:
    lines = [
        "# Cost model",
        "",
        f"Analytic FLOPs and minimum bytes (bf16); roofline times against {roofline.name}: "
        f"{roofline.peak_flops / 1e12:.0f} TFLOP/s, {roofline.peak_bandwidth / 1e12:.2f} TB/s. "
        "These are bounds, not measurements.",
        "",
        "## Kernel calls",
        "",
        "| model | kernel | B | H | N_img | T | GFLOP | MB | FLOP/B | fwd bound µs | fwd+bwd bound µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in kernel_rows:
        lines.append(
            f"| {r['model']} | {r['kernel']} | {r['B']} | {r['H']} | {r['N_img']} | {r['T']} | "
            f"{r['fwd_gflop']:.2f} | {r['fwd_mb']:.1f} | {r['fwd_flop_per_byte']:.0f} | "
            f"{r['fwd_roofline_us']:.1f} | {r['fwd_bwd_roofline_us']:.1f} |"
        )
    lines += [
        "",
        "## Encoder forward (ViT-S/16 @224, T = 32, per image)",
        "",
        "| encoder | GFLOP | × plain | tokens after last block | measured ms/image (CPU) |",
        "|---|---|---|---|---|",
    ]
    for r in encoder_rows:
        measured = r.get("measured_ms_per_image_cpu")
        measured_text = f"{measured:.1f}" if isinstance(measured, (int, float)) else "—"
        lines.append(
            f"| {r['encoder']} | {r['gflop_per_image']:.2f} | {r['ratio_to_plain']:.2f} | "
            f"{r['final_tokens']} | {measured_text} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    """Write ``cost_model.json`` and ``cost_model.md`` into ``--out`` (default ``results/``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    kernel_rows = _kernel_rows(H100_SXM)
    encoder_rows = _encoder_rows()
    _attach_measured(encoder_rows, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"roofline": asdict(H100_SXM), "kernels": kernel_rows, "encoder": encoder_rows}
    (args.out / "cost_model.json").write_text(json.dumps(report, indent=2))
    markdown = _markdown(kernel_rows, encoder_rows, H100_SXM)
    (args.out / "cost_model.md").write_text(markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
