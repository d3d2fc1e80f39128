from __future__ import annotations

import math

import pytest
import torch

from gdf_pyg.nn.losses import (
    GDFLoss,
    LossWeights,
    bit_balance_loss,
    cauchy_distance,
    cauchy_quantization_loss,
    code_classification_loss,
    pairwise_cauchy_loss,
)


def test_cauchy_distance_is_hamming_on_binary_codes():
    a = torch.tensor([[1.0, -1, 1, 1, -1, 1]])
    b = torch.tensor([[1.0, 1, 1, -1, -1, -1]])
    assert cauchy_distance(a, b).item() == pytest.approx(3.0)


def test_cauchy_quantization_hand_values():
    # |h| = (1, 0): cos(|h|, 1) = 1/sqrt(2), d = (2/2)(1 - 1/sqrt(2)).
    h = torch.tensor([[1.0, 0.0], [-0.5, 0.5]])
    d0 = 1 - 1 / math.sqrt(2)
    expected = (math.log(1 + d0 / 2.0) + math.log(1 + 0.0)) / 2
    assert cauchy_quantization_loss(h, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert cauchy_quantization_loss(torch.tensor([[1.0, -1.0, 1.0]]), 5.0).item() == pytest.approx(0.0, abs=1e-7)


def test_bit_balance_hand_values_and_gradient():
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]], requires_grad=True)
    loss = bit_balance_loss(h)
    assert loss.item() == pytest.approx((1.0**2 + 0.0**2) / 2)
    loss.backward()
    # d/dh_ik = 2 * mean_k / (B * K): bit 0 has mean 1, bit 1 mean 0.
    torch.testing.assert_close(h.grad, torch.tensor([[0.25, 0.0]] * 4))


def test_bit_balance_trains_where_sign_version_cannot():
    z = torch.randn(16, 8, requires_grad=True)
    h = torch.tanh(z)
    reference_style = torch.sign(h).mean(0).pow(2).mean()  # the reference code's version
    (g_ref,) = torch.autograd.grad(reference_style, z, retain_graph=True)
    assert torch.count_nonzero(g_ref) == 0
    (g,) = torch.autograd.grad(bit_balance_loss(h), z)
    assert torch.count_nonzero(g) > 0


def test_pairwise_cauchy_hand_values():
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    gamma = 2.0
    d = lambda a, b: cauchy_distance(h[a], h[b]).clamp_min(1e-6).item()  # noqa: E731
    sim = lambda a, b: math.log(1 + d(a, b) / gamma)  # noqa: E731
    dis = lambda a, b: math.log(1 + gamma / d(a, b))  # noqa: E731
    # 6 ordered pairs: 2 similar (0,1),(1,0); 4 dissimilar. Weights 6/2 and 6/4.
    total = 3.0 * (sim(0, 1) + sim(1, 0)) + 1.5 * (dis(0, 2) + dis(2, 0) + dis(1, 2) + dis(2, 1))
    assert pairwise_cauchy_loss(h, labels, gamma).item() == pytest.approx(total / 6, rel=1e-5)


def test_losses_gradcheck():
    h = (torch.rand(5, 6, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    h.data[h.data.abs() < 0.05] = 0.3  # away from the kink of |h|
    labels = torch.tensor([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda t: cauchy_quantization_loss(t, 3.0), (h,))
    assert torch.autograd.gradcheck(bit_balance_loss, (h,))
    assert torch.autograd.gradcheck(lambda t: pairwise_cauchy_loss(t, labels, 3.0), (h,))
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: code_classification_loss(t, torch.tensor([0, 1, 2, 0, 1])), (logits,))


def test_gdf_loss_combines_weighted_terms():
    codes = torch.tanh(torch.randn(8, 12))
    logits = torch.randn(8, 4)
    labels = torch.randint(0, 4, (8,))
    w = LossWeights(classification=1.0, quantization=0.5, balance=0.25, pairwise=2.0, gamma=10.0)
    out = GDFLoss(w)(codes, logits, labels)
    expected = (
        code_classification_loss(logits, labels)
        + 0.5 * cauchy_quantization_loss(codes, 10.0)
        + 0.25 * bit_balance_loss(codes)
        + 2.0 * pairwise_cauchy_loss(codes, labels, 10.0)
    )
    torch.testing.assert_close(out["loss"], expected)
    assert set(out) == {"loss", "classification", "quantization", "balance", "pairwise"}
    assert "pairwise" not in GDFLoss(LossWeights(pairwise=0.0))(codes, logits, labels)


def test_loss_bad_arguments():
    with pytest.raises(ValueError, match="gamma must be positive"):
        cauchy_quantization_loss(torch.zeros(2, 3), gamma=0.0)
    with pytest.raises(ValueError, match=r"shape \(batch, bits\)"):
        bit_balance_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="labels has 2 rows for 3 codes"):
        pairwise_cauchy_loss(torch.zeros(3, 4), torch.tensor([0, 1]))
