"""Bad input to the kernels' public API: each error names the offending argument."""

from __future__ import annotations

import pytest
import torch

from textvision.kernels import cross_attention, dispatch, mutual_attention

B, H, N, T, D = 2, 2, 5, 3, 16


def _cross_args(**over):
    g = torch.Generator().manual_seed(0)
    args = {
        "q": torch.randn(B, H, N, D, generator=g),
        "k": torch.randn(B, H, T, D, generator=g),
        "v": torch.randn(B, H, T, D, generator=g),
        "key_padding_mask": torch.ones(B, T, dtype=torch.bool),
    }
    args.update(over)
    return args


def _mutual_args(**over):
    g = torch.Generator().manual_seed(1)
    args = {name: torch.randn(B, H, n, D, generator=g) for name, n in
            (("q_img", N), ("k_img", N), ("v_img", N), ("q_txt", T), ("k_txt", T), ("v_txt", T))}
    args["text_mask"] = torch.ones(B, T, dtype=torch.bool)
    args.update(over)
    return args


@pytest.mark.parametrize(
    "override,error,match",
    [
        ({"q": torch.randn(B, N, D)}, ValueError, "`q`.*4 dims"),
        ({"k": torch.randn(B, H, T, D, 1)}, ValueError, "`k`.*4 dims"),
        ({"v": [[1.0]]}, TypeError, "`v` must be a torch.Tensor"),
        ({"k": torch.randn(B + 1, H, T, D)}, ValueError, "batch size mismatch: `k`"),
        ({"v": torch.randn(B, H + 1, T, D)}, ValueError, "head count mismatch: `v`"),
        ({"k": torch.randn(B, H, T, D * 2)}, ValueError, "head dim mismatch: `k`"),
        ({"v": torch.randn(B, H, T + 1, D)}, ValueError, "length mismatch: `k`.*`v`"),
        ({"v": torch.randn(B, H, T, D, dtype=torch.float64)}, TypeError, "`v` has dtype torch.float64"),
        ({"q": torch.randint(0, 3, (B, H, N, D))}, TypeError, "`q` must be a floating tensor"),
        ({"key_padding_mask": torch.ones(B, T)}, TypeError, "`key_padding_mask` must have dtype torch.bool"),
        ({"key_padding_mask": torch.ones(B, T + 1).bool()}, ValueError, "`key_padding_mask` must have shape"),
        ({"key_padding_mask": torch.ones(T).bool()}, ValueError, "`key_padding_mask` must have shape"),
        ({"key_padding_mask": [[True] * T] * B}, TypeError, "`key_padding_mask` must be a bool torch.Tensor"),
    ],
)
def test_cross_attention_rejects_bad_input(override, error, match):
    with pytest.raises(error, match=match):
        cross_attention(**_cross_args(**override), backend="torch")


@pytest.mark.parametrize(
    "override,error,match",
    [
        ({"q_txt": torch.randn(B, T, D)}, ValueError, "`q_txt`.*4 dims"),
        ({"k_img": torch.randn(B, H, N + 1, D)}, ValueError, "length mismatch: `q_img`.*`k_img`"),
        ({"v_txt": torch.randn(B, H, T + 2, D)}, ValueError, "length mismatch: `k_txt`.*`v_txt`"),
        ({"k_txt": torch.randn(B, H + 1, T, D)}, ValueError, "head count mismatch: `k_txt`"),
        ({"v_img": torch.randn(B, H, N, D + 16)}, ValueError, "head dim mismatch: `v_img`"),
        ({"q_txt": torch.randn(B + 1, H, T, D)}, ValueError, "batch size mismatch: `q_txt`"),
        ({"text_mask": torch.ones(B, T, dtype=torch.int64)}, TypeError, "`text_mask` must have dtype"),
        ({"text_mask": torch.ones(B, N, dtype=torch.bool)}, ValueError, "`text_mask` must have shape"),
    ],
)
def test_mutual_attention_rejects_bad_input(override, error, match):
    with pytest.raises(error, match=match):
        mutual_attention(**_mutual_args(**override), backend="torch")


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="`backend` must be one of"):
        cross_attention(**_cross_args(), backend="cuda")
    with pytest.raises(ValueError, match="`scale` must be finite and positive"):
        cross_attention(**_cross_args(), scale=-1.0)
    with pytest.raises(TypeError, match="`scale` must be a float"):
        cross_attention(**_cross_args(), scale="0.1")
    with pytest.raises(TypeError, match="`return_relevance` must be a bool"):
        mutual_attention(**_mutual_args(), return_relevance=1)


def test_triton_rejects_head_dims_above_128():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, H, n, 256, generator=g) for n in (N, T, T))
    with pytest.raises(ValueError, match="head dim 256 of `q` is not supported"):
        cross_attention(q, k, v, backend="triton")
    # The reference takes any head dim.
    assert cross_attention(q, k, v, backend="torch").o.shape == q.shape


def test_auto_falls_back_to_the_reference_with_a_logged_warning(monkeypatch, caplog):
    # Pretend the tensors are on CUDA: `auto` would pick Triton, but head dim 256 is unsupported.
    pretend_cuda = lambda backend, device: backend.replace("auto", "triton")
    monkeypatch.setattr(dispatch, "resolve_backend", pretend_cuda)
    monkeypatch.setattr(dispatch, "FALLBACKS", type(dispatch.FALLBACKS)())
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(B, H, n, 256, generator=g) for n in (N, T, T))
    with caplog.at_level("DEBUG", logger=dispatch.__name__):
        for _ in range(3):
            o = cross_attention(q, k, v, backend="auto").o
    torch.testing.assert_close(o, cross_attention(q, k, v, backend="torch").o)
    records = [r for r in caplog.records if "falls back to the PyTorch reference" in r.getMessage()]
    # Every fallback is logged: a warning the first time for a reason, debug afterwards.
    assert [r.levelname for r in records] == ["WARNING", "DEBUG", "DEBUG"]
    assert "head dim 256 of `q` is not supported" in records[0].getMessage()
    assert sum(dispatch.FALLBACKS.values()) == 3


def test_triton_rejects_float64():
    args = {k: v.double() if v.is_floating_point() else v for k, v in _mutual_args().items()}
    with pytest.raises(TypeError, match=r"`q_img` has dtype torch.float64.*backend='torch'"):
        mutual_attention(**args, backend="triton")


def test_non_contiguous_inputs_are_handled():
    # (B, N, H, D) -> (B, H, N, D) views, as a fusion module produces them.
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, n, H, D, generator=g).transpose(1, 2) for n in (N, T, T))
    assert not q.is_contiguous()
    expected = cross_attention(q.contiguous(), k.contiguous(), v.contiguous(), backend="torch")
    torch.testing.assert_close(cross_attention(q, k, v, backend="torch").o, expected.o)
