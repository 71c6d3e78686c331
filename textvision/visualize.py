"""Draw what the instruction does to the image: the relevance heatmap and the patches kept by pruning.

Function: :func:`draw_relevance` (pure drawing) and :func:`visualize` (run an encoder, then draw).
CLI::

    python -m textvision.visualize --image cat.png --instruction "what colour is the cat?" \
        [--config configs/demo.yaml] [--checkpoint runs/demo/version_0/checkpoints/last.ckpt] \
        --out relevance.png

``--config`` is a textvision LightningCLI config, the one ``textvision fit -c`` takes (default:
``configs/demo.yaml``); the model is built by the CLI's own parser
(``TextVisionCLI(args=[...], run=False)``), so the config is the only model definition, and
further ``--section.key value`` arguments override it as on the ``textvision`` command line.
``--checkpoint`` is a Lightning checkpoint of that model: its weights load as
``textvision test --ckpt_path`` loads them (:meth:`TextVisionModule.load_weights`), and one that
does not fit the model is refused, naming the keys.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from textvision.data.images import load_image
from textvision.encoder import EncoderOutput, TextAwareEncoder

__all__ = ["build_encoder", "draw_relevance", "main", "visualize"]

_logger = logging.getLogger(__name__)


def draw_relevance(
    image: torch.Tensor,
    grid: tuple[int, int],
    *,
    relevance: torch.Tensor | None,
    kept_indices: torch.Tensor | None,
    instruction: str = "",
    out: str | Path | None = None,
) -> Figure:
    """Two panels over the image: the relevance heatmap, and the kept patches (others dimmed).

    Args:
        image: ``(3, H, W)`` float in [0, 1].
        grid: patch grid ``(gh, gw)`` of the encoder for this image.
        relevance: ``(gh * gw,)`` relevance over patches (row-major), or None.
        kept_indices: ``(K,)`` kept patch positions, or None (no pruning: every patch kept).
        instruction: drawn as the title.
        out: PNG path to write (parent folders are created); None only returns the figure.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    gh, gw = grid
    height, width = image.shape[-2:]
    picture = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    # A bare Figure (no pyplot): no global backend state, nothing to close, safe in workers.
    figure = Figure(figsize=(8.5, 4.6))
    left, right = figure.subplots(1, 2)
    extent = (0, width, height, 0)  # pixel edges, so patch rectangles line up with the pixels
    left.imshow(picture, extent=extent)
    if relevance is not None:
        if relevance.numel() != gh * gw:
            raise ValueError(f"relevance has {relevance.numel()} entries for a {gh}x{gw} patch grid")
        heat = relevance.detach().float().cpu().view(1, 1, gh, gw)
        heat = F.interpolate(heat, size=(height, width), mode="nearest")[0, 0]
        low, high = float(heat.min()), float(heat.max())
        scaled = (heat - low) / (high - low) if high > low else torch.zeros_like(heat)
        shown = left.imshow(scaled.numpy(), cmap="inferno", alpha=0.55, vmin=0, vmax=1, extent=extent)
        figure.colorbar(shown, ax=left, fraction=0.046, pad=0.02, label=f"relevance, {low:.3g} to {high:.3g}")
        left.set_title("instruction relevance")
    else:
        left.set_title("no relevance (fusion does not attend to text)")
    right.imshow(picture, extent=extent)
    ph, pw = height / gh, width / gw
    kept = set(range(gh * gw)) if kept_indices is None else {int(i) for i in kept_indices.flatten()}
    for index in range(gh * gw):
        row, col = divmod(index, gw)
        if index in kept:
            right.add_patch(
                Rectangle((col * pw, row * ph), pw, ph, fill=False, edgecolor="lime", linewidth=1.2)
            )
        else:
            right.add_patch(Rectangle((col * pw, row * ph), pw, ph, color="black", alpha=0.6, linewidth=0))
    right.set_title(f"kept patches: {len(kept)} / {gh * gw}")
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(instruction if len(instruction) <= 90 else instruction[:87] + "...", fontsize=10)
    figure.tight_layout()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=120)
    return figure


@torch.no_grad()
def visualize(
    encoder: TextAwareEncoder, image: torch.Tensor, instruction: str, out: str | Path | None = None
) -> tuple[EncoderOutput, Figure]:
    """Encode one image with its instruction and draw :func:`draw_relevance` to ``out``."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    result = encoder(image.unsqueeze(0).to(device), [instruction])
    encoder.train(was_training)
    grid = encoder.backbone.patch_grid(image.unsqueeze(0))
    figure = draw_relevance(
        image,
        grid,
        relevance=None if result.relevance is None else result.relevance[0],
        kept_indices=None if result.kept_indices is None else result.kept_indices[0],
        instruction=instruction,
        out=out,
    )
    return result, figure


def build_encoder(
    *, config: str | Path, checkpoint: str | Path | None = None, cli_args: Sequence[str] = ()
) -> TextAwareEncoder:
    """The encoder of the model that ``config`` defines, built through :class:`TextVisionCLI`,
    with the weights of ``checkpoint`` (a Lightning ``.ckpt`` of that model) when given.

    ``cli_args`` are more LightningCLI arguments (``--model.vlm.init_args.encoder.init_args.keep_tokens
    4``). The trainer is built on one device without loggers, checkpointing or callbacks: nothing is
    written.
    """
    import warnings

    from textvision.train.cli import TextVisionCLI

    args = ["-c", str(config), *cli_args]
    args += ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    args += ["--trainer.callbacks", "[]", "--trainer.devices", "1", "--trainer.strategy", "auto"]
    with warnings.catch_warnings():
        # sys.argv holds the visualiser's own flags; LightningCLI only gets the arguments built here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = TextVisionCLI(args=args, run=False)
    if checkpoint is not None:
        cli.model.load_weights(checkpoint)
    encoder = cli.model.vlm.encoder
    if not isinstance(encoder, TextAwareEncoder):
        raise TypeError(
            f"{config}: the model's encoder is a {type(encoder).__name__}, not a TextAwareEncoder"
        )
    return encoder


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the visualiser CLI (see the module docstring); returns the PNG path."""
    from textvision.train.demo import default_config

    parser = argparse.ArgumentParser(
        prog="python -m textvision.visualize",
        description="Draw the instruction relevance heatmap and the kept patches over an image (PNG).",
        epilog="Other arguments go to LightningCLI, e.g. --trainer.accelerator cpu.",
    )
    parser.add_argument("--image", required=True, help="image file (any mode: grayscale, RGBA, 16-bit, ...)")
    parser.add_argument("--instruction", required=True, help="the question / instruction")
    parser.add_argument("--config", help="textvision LightningCLI YAML (default: configs/demo.yaml)")
    parser.add_argument("--checkpoint", help="Lightning checkpoint (.ckpt) of the config's model")
    parser.add_argument(
        "--size", type=int, help="resize the image to this square size (default: encoder native)"
    )
    parser.add_argument("--out", required=True, help="output PNG path")
    args, cli_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = Path(args.config) if args.config else default_config()
    encoder = build_encoder(config=config, checkpoint=args.checkpoint, cli_args=cli_args)
    if not args.checkpoint:
        _logger.warning(
            "no --checkpoint: the fusion layers are untrained, the heatmap shows an initial model"
        )
    image = load_image(args.image, size=args.size or encoder.backbone.image_size)
    result, _ = visualize(encoder, image, args.instruction, args.out)
    gh, gw = encoder.backbone.patch_grid(image.unsqueeze(0))
    kept = gh * gw if result.kept_indices is None else result.kept_indices.shape[1]
    _logger.info("wrote %s (%d of %d patches kept)", args.out, kept, gh * gw)
    return Path(args.out)


if __name__ == "__main__":
    main()
