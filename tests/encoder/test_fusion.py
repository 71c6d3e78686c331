"""Fusion variants, every registered one: exact step-0 equality with the plain backbone, gradient
flow, the FLOP count each class declares; the registry; variants given as classes or factories."""

from __future__ import annotations

import functools
import importlib
import pkgutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import textvision.fusion
from textvision.encoder import TextAwareEncoder
from textvision.fusion import FUSIONS, Fusion, FusionFlops, FusionOutput, register_fusion, resolve_fusion

from .conftest import plain_reference, tiny_timm

VARIANTS = sorted(FUSIONS)
TEXT_ATTENDING = [name for name in VARIANTS if FUSIONS[name].attends_to_text]
#: variants that change the block at all (a gate to open); the text-agnostic baseline has none
GATED = [name for name in VARIANTS if list(FUSIONS[name](dim=8, num_heads=2).gates())]
FAMILIES = ["timm", "timm_nocls", "open_clip"]


def _text(batch: int, width: int = 24, length: int = 5):
    hidden = torch.randn(batch, length, width)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        mask[row, : (row * 2) % (length + 1)] = True  # row 0 is all padding
    mask[-1, 0] = True
    return hidden, mask


def test_every_fusion_module_of_the_package_is_registered():
    # the package imports its own files: a variant file needs no edit anywhere else
    modules = {m.name for m in pkgutil.iter_modules(textvision.fusion.__path__, "textvision.fusion.")}
    declared = {cls.__module__ for cls in FUSIONS.values()}
    assert declared == modules - {"textvision.fusion.base"}
    for module in modules - {"textvision.fusion.base"}:  # each variant file's classes are registered
        defined = [
            obj
            for obj in vars(importlib.import_module(module)).values()
            if isinstance(obj, type) and issubclass(obj, Fusion) and obj.__module__ == module
        ]
        assert all(cls in FUSIONS.values() for cls in defined), module
    assert all(issubclass(cls, Fusion) for cls in FUSIONS.values())
    assert TEXT_ATTENDING and len(TEXT_ATTENDING) < len(VARIANTS)  # both kinds exist


def test_resolve_and_register_errors():
    with pytest.raises(ValueError, match=r"unknown fusion 'cross'; registered: \['"):
        resolve_fusion("cross")
    with pytest.raises(TypeError, match="registered name or a Fusion factory"):
        resolve_fusion(3)  # type: ignore[arg-type]
    name = VARIANTS[0]
    assert resolve_fusion(name) is FUSIONS[name] and resolve_fusion(FUSIONS[name]) is FUSIONS[name]
    with pytest.raises(KeyError, match="already registered"):
        register_fusion(name)(Fusion)
    with pytest.raises(TypeError, match="Fusion subclass"):
        register_fusion("test_not_a_fusion")(torch.nn.Linear)
    assert "test_not_a_fusion" not in FUSIONS


@pytest.mark.parametrize("fusion", VARIANTS)
def test_declared_flops_equal_the_counted_flops_of_the_forward(fusion):
    # what bench/perf/cost_model.py reads: FlopCounterMode counts the matmuls and attention of the
    # variant's forward (gates open), less the block's own attention sub-layer
    torch.manual_seed(0)
    backbone = tiny_timm()
    view = backbone.block(0)
    x = backbone.embed(torch.rand(2, 3, 32, 32))
    text, mask = torch.randn(2, 5, backbone.width), torch.ones(2, 5, dtype=torch.bool)
    cls = FUSIONS[fusion]
    module = cls(dim=backbone.width, num_heads=backbone.num_heads, backend="torch")
    with torch.no_grad():
        for gate in module.gates():
            gate.fill_(0.5)

    def counted(step) -> int:
        with FlopCounterMode(display=False) as counter:
            step()
        return counter.get_total_flops()

    own = counted(lambda: module(x, text, mask, block=view)) - counted(lambda: view.attention(x))
    declared = cls.flops(
        batch=2, tokens=x.shape[1], text_tokens=5, dim=backbone.width, num_heads=backbone.num_heads
    )
    assert isinstance(declared, FusionFlops) and declared.total == own
    assert (declared.attention > 0) == cls.attends_to_text


def test_a_variant_without_a_flop_count_says_so():
    class Uncounted(Fusion):
        pass

    with pytest.raises(NotImplementedError, match="Uncounted does not define its FLOP count"):
        Uncounted.flops(batch=1, tokens=2, text_tokens=3, dim=8, num_heads=2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fusion", VARIANTS)
@torch.no_grad()
def test_step_zero_output_equals_plain_backbone_exactly(make_backbone, family, fusion):
    # Under no_grad both sides take the same kernels: with autograd on, open_clip's
    # nn.MultiheadAttention leaves its fused fast path whenever an input requires grad (here:
    # after the first trainable gate), which changes the last bits on PyTorch's side.
    torch.manual_seed(0)
    backbone = make_backbone(family)
    encoder = TextAwareEncoder(backbone=backbone, text_dim=24, fusion=fusion, backend="torch").eval()
    images = torch.rand(3, 3, 32, 32)
    out = encoder(images, text_features=_text(3))
    reference = plain_reference(backbone, images)
    assert torch.equal(out.tokens, reference), (out.tokens - reference).abs().max()
    # the fusion path really ran: with the gates opened the output changes
    if fusion in GATED:
        for module in encoder.fusion.values():
            for gate in module.gates():
                gate.fill_(0.5)
        assert not torch.allclose(encoder(images, text_features=_text(3)).tokens, reference)


@pytest.mark.parametrize("family", ["timm", "open_clip"])
@pytest.mark.parametrize("fusion", GATED)
def test_gradients_reach_fusion_and_adapter_but_not_frozen_parts(make_backbone, family, fusion):
    torch.manual_seed(0)
    encoder = TextAwareEncoder(backbone=make_backbone(family), text_dim=24, fusion=fusion).train()
    images = torch.rand(2, 3, 32, 32)
    text = _text(2)
    # step 0: only the patch-side gates can move (every other new weight sits behind tanh(0) = 0;
    # mutual's text-stream gate waits until a later block's gate has opened)
    encoder(images, text_features=text).tokens.square().mean().backward()
    for module in encoder.fusion.values():
        assert module.gate.grad is not None and module.gate.grad.abs().sum() > 0
    # once the gates are open, every fusion parameter and the text adapter get a gradient
    encoder.zero_grad(set_to_none=True)
    with torch.no_grad():
        for module in encoder.fusion.values():
            for gate in module.gates():
                gate.fill_(0.3)
    encoder(images, text_features=text).tokens.square().mean().backward()
    for name, param in [*encoder.fusion.named_parameters(), *encoder.text_adapter.named_parameters()]:
        if name.endswith("text_proj.weight") or name.endswith("text_proj.bias") or name.endswith("text_gate"):
            # the mutual text stream only feeds later blocks: none after the last block
            if name.startswith(str(encoder.backbone.depth - 1)):
                continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in encoder.backbone.parameters())
    groups = encoder.parameter_groups()
    assert groups["backbone"] == [] and groups["text_encoder"] == []
    assert (
        len(groups["fusion"]) == len(list(encoder.fusion.parameters())) and len(groups["text_adapter"]) == 2
    )


def test_unfrozen_backbone_trains_too(make_backbone):
    encoder = TextAwareEncoder(
        backbone=make_backbone("timm"), text_dim=24, fusion=GATED[0], freeze_backbone=False
    )
    encoder(torch.rand(1, 3, 32, 32), text_features=_text(1)).tokens.sum().backward()
    assert encoder.backbone.model.blocks[0].attn.qkv.weight.grad is not None
    assert encoder.parameter_groups()["backbone"]


class ScaledResidual(Fusion):
    """A user's variant with a setting of its own, never registered."""

    def __init__(self, *, dim: int, num_heads: int, backend: str = "auto", alpha: float = 1.0) -> None:
        super().__init__(dim=dim, num_heads=num_heads, backend=backend)
        self.alpha = alpha
        self.gate = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, text, text_mask, *, block, need_relevance=False):
        return FusionOutput(block.attention(x) * (1 + self.alpha * self.gate), text, None)


@pytest.mark.parametrize(
    "fusion", [ScaledResidual, functools.partial(ScaledResidual, alpha=0.5)], ids=["class", "partial"]
)
def test_custom_variant_is_one_class_or_factory(make_backbone, fusion):
    backbone = make_backbone("timm")
    encoder = TextAwareEncoder(backbone=backbone, text_dim=24, fusion=fusion, fusion_blocks=[0, 2]).eval()
    images = torch.rand(1, 3, 32, 32)
    assert sorted(encoder.fusion) == ["0", "2"]
    assert encoder.fusion["0"] is not encoder.fusion["2"]  # one module per block
    expected_alpha = getattr(fusion, "keywords", {}).get("alpha", 1.0)
    assert all(m.alpha == expected_alpha and m.dim == backbone.width for m in encoder.fusion.values())
    assert torch.equal(encoder(images, text_features=_text(1)).tokens, plain_reference(backbone, images))
