"""Plain-PyTorch reference for :func:`textvision.kernels.mutual_attention`.

It builds the concatenated keys/values explicitly (which the Triton kernel never does) and runs
masked attention over them: obviously correct, the ground truth for the kernel tests and the CPU
path of ``backend="auto"``.
"""

from __future__ import annotations

import torch

from .cross_attention_reference import _compute_dtype, masked_softmax_attention
from .outputs import MutualAttentionOutput

__all__ = ["mutual_attention_reference"]


def mutual_attention_reference(
    q_img: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    q_txt: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    text_mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    return_relevance: bool = False,
) -> MutualAttentionOutput:
    """Modality-mutual attention (AKI, arXiv:2503.02597, made bidirectional).

    Image queries attend over ``[image keys ; valid text keys]`` and text queries over
    ``[valid text keys ; image keys]``, each in one softmax. Padded text query rows give 0.
    ``rel[b, i]`` = mean over heads and valid text queries of the text→image attention
    probability on image key ``i`` (not renormalised); 0 for a sample with no valid text.

    Args:
        q_img, k_img, v_img: ``(B, H, N, D)``.
        q_txt, k_txt, v_txt: ``(B, H, T, D)``.
        text_mask: ``(B, T)`` bool, True = real token; None = all real.
        scale: defaults to ``D ** -0.5``.
        return_relevance: also compute ``rel`` ``(B, N)`` float32, detached.

    Returns:
        :class:`MutualAttentionOutput` ``(o_img (B, H, N, D), o_txt (B, H, T, D), rel (B, N) or
        None)``.
    """
    B, H, N, D = q_img.shape
    T = q_txt.shape[2]
    scale = D**-0.5 if scale is None else scale
    if text_mask is None:
        text_mask = torch.ones(B, T, dtype=torch.bool, device=q_img.device)
    dtype = _compute_dtype(q_img.dtype)
    # One attention over the explicitly concatenated sequence [image ; text]: image and text
    # queries alike see every image key and the valid text keys (key order does not change a
    # softmax, so this is also "text queries over [valid text keys ; image keys]").
    pairs = ((q_img, q_txt), (k_img, k_txt), (v_img, v_txt))
    q, k, v = (torch.cat([image, text], dim=2).to(dtype) for image, text in pairs)
    key_valid = torch.cat([torch.ones(B, N, dtype=torch.bool, device=q_img.device), text_mask], dim=1)
    o, p, _ = masked_softmax_attention(q, k, v, key_valid, scale)
    query_valid = text_mask[:, None, :, None]
    o_img = o[:, :, :N]
    o_txt = o[:, :, N:] * query_valid  # padded text query rows give 0
    outputs = (o_img.to(q_img.dtype), o_txt.to(q_txt.dtype))
    if not return_relevance:
        return MutualAttentionOutput(*outputs)
    with torch.no_grad():
        p_img_keys = p.detach()[:, :, N:, :N].float() * query_valid  # text queries → image keys (B, H, T, N)
        n_valid = text_mask.sum(dim=-1).to(torch.float32)
        rel = p_img_keys.sum(dim=(1, 2)) / (H * n_valid).clamp_min(1.0)[:, None]
    return MutualAttentionOutput(*outputs, rel.to(torch.float32))
