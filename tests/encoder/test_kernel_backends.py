"""The encoder gives the same answer on the PyTorch-reference and the Triton (interpreter) kernels."""

from __future__ import annotations

import pytest
import torch

from textvision.encoder import TextAwareEncoder
from textvision.fusion import FUSIONS

from .conftest import tiny_timm


def _triton_ready() -> str | None:
    from textvision.kernels import cross_attention

    q = torch.randn(1, 1, 2, 16)
    try:
        cross_attention(q, q, q, backend="triton")
    except (NotImplementedError, RuntimeError) as error:
        return str(error)
    return None


@pytest.mark.parametrize("fusion", sorted(n for n, cls in FUSIONS.items() if cls.attends_to_text))
def test_torch_and_triton_backends_agree(fusion):
    reason = _triton_ready()
    if reason:
        pytest.skip(f"textvision.kernels has no usable Triton path here: {reason}")
    torch.manual_seed(0)
    # 16 px / 8 px patches: 4 patches + CLS; 2 heads of width 16 (a Triton-supported head dim)
    encoder = TextAwareEncoder(
        backbone=tiny_timm(img_size=16, depth=2, num_heads=2),
        text_dim=12,
        fusion=fusion,
        prune_at=(0,),
        keep_tokens=2,
        merge_dropped=True,
    )
    with torch.no_grad():
        for module in encoder.fusion.values():
            for gate in module.gates():
                gate.fill_(0.8)
    images = torch.rand(2, 3, 16, 16)
    hidden = torch.randn(2, 3, 12)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    results = {}
    for backend in ("torch", "triton"):
        encoder.set_backend(backend)
        encoder.zero_grad(set_to_none=True)
        out = encoder(images, text_features=(hidden, mask))
        out.tokens.square().sum().backward()
        grads = {name: p.grad.clone() for name, p in encoder.fusion.named_parameters() if p.grad is not None}
        results[backend] = (out, grads)
    (ref, ref_grads), (tri, tri_grads) = results["torch"], results["triton"]
    torch.testing.assert_close(tri.tokens, ref.tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tri.relevance, ref.relevance, atol=1e-5, rtol=1e-4)
    assert torch.equal(tri.kept_indices, ref.kept_indices)
    assert ref_grads.keys() == tri_grads.keys() and ref_grads
    for name, grad in ref_grads.items():
        torch.testing.assert_close(tri_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)
