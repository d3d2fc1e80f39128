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


def test_gdf_loss_adds_the_posterior_classifiers_cross_entropy():
    codes = torch.tanh(torch.randn(8, 12))
    logits, class_logits = torch.randn(8, 4), torch.randn(8, 4, requires_grad=True)
    labels = torch.randint(0, 4, (8,))
    w = LossWeights(classification=1.0, posterior=0.5, quantization=0.0, balance=0.0, label_smoothing=0.1)
    out = GDFLoss(w)(codes, logits, labels, class_logits)
    want = -(0.9 * torch.log_softmax(class_logits, 1).gather(1, labels[:, None]).squeeze(1)
             + 0.1 * torch.log_softmax(class_logits, 1).mean(1)).mean()  # smoothed cross-entropy by hand
    torch.testing.assert_close(out["posterior"], 0.5 * want)
    torch.testing.assert_close(out["loss"], out["classification"] + out["posterior"])
    out["loss"].backward()
    assert class_logits.grad.abs().sum() > 0
    assert "posterior" not in GDFLoss(w)(codes, logits, labels)
    assert "posterior" not in GDFLoss(LossWeights(posterior=0.0))(codes, logits, labels, class_logits)


def test_loss_bad_arguments():
    with pytest.raises(ValueError, match="gamma must be positive"):
        cauchy_quantization_loss(torch.zeros(2, 3), gamma=0.0)
    with pytest.raises(ValueError, match=r"shape \(batch, bits\)"):
        bit_balance_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="labels has 2 rows for 3 codes"):
        pairwise_cauchy_loss(torch.zeros(3, 4), torch.tensor([0, 1]))


# ---- class targets: hash centers (CSQ) and orthogonal class codes (OrthoHash) ---------------
@pytest.mark.parametrize("n", [1, 2, 4, 12, 16, 24, 32, 48, 64, 96])
def test_hadamard_matrices(n):
    from gdf_pyg.nn.losses import hadamard_matrix

    h = hadamard_matrix(n)
    assert h is not None and set(h.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(h @ h.t(), n * torch.eye(n))


def test_no_hadamard_matrix_of_order_10():
    from gdf_pyg.nn.losses import hadamard_matrix

    assert hadamard_matrix(10) is None


@pytest.mark.parametrize("classes, bits", [(10, 12), (24, 12), (48, 24), (64, 32), (90, 48)])
def test_hadamard_centers_are_at_least_half_the_bits_apart(classes, bits):
    from gdf_pyg.nn.losses import hash_centers

    c = hash_centers(classes, bits)
    distance = ((bits - c @ c.t()) / 2).fill_diagonal_(bits)
    assert c.shape == (classes, bits) and distance.min() >= bits / 2


def test_random_centers_are_balanced_distinct_and_seeded():
    from gdf_pyg.nn.losses import hash_centers

    c = hash_centers(102, 48)  # more classes than 2K: no Hadamard construction applies
    assert torch.equal(c.sum(1), torch.zeros(102)) and len(torch.unique(c, dim=0)) == 102
    assert ((48 - c @ c.t()) / 2).fill_diagonal_(48).min() >= 16
    assert torch.equal(hash_centers(102, 48, "random", seed=3), hash_centers(102, 48, "random", seed=3))
    assert not torch.equal(hash_centers(102, 48, "random", seed=3), hash_centers(102, 48, "random", seed=4))


@pytest.mark.parametrize("classes, bits, apart", [(102, 12, 4), (200, 12, 3), (102, 16, 6), (525, 16, 4)])
def test_short_code_centers_reach_the_lexicode_distance(classes, bits, apart):
    # Balanced 12-bit words cannot hold 102 classes 4 apart (first-fit reaches 2); the
    # lexicode (shortened extended Hamming code: 128 words, distance 4) can.
    from gdf_pyg.nn.losses import hash_centers

    c = hash_centers(classes, bits)
    assert c.shape == (classes, bits) and len(torch.unique(c, dim=0)) == classes
    assert ((bits - c @ c.t()) / 2).fill_diagonal_(bits).min() >= apart
    assert c.mean(0).abs().max() < 0.3  # no bit (nearly) constant over the classes
    assert not torch.equal(c, hash_centers(classes, bits, seed=1))


def test_center_loss_hand_values_and_gradient():
    from gdf_pyg.nn.losses import center_loss

    centers = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    h = torch.tensor([[0.6, -0.2], [0.0, 0.0]])
    # bits' probabilities of +1: (0.8, 0.4) toward (1, 0); (0.5, 0.5) toward (0, 1)
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.5) + math.log(0.5)) / 4
    assert center_loss(h, torch.tensor([0, 1]), centers).item() == pytest.approx(expected, rel=1e-6)
    x = torch.randn(4, 6, dtype=torch.float64).tanh().mul(0.9).requires_grad_()
    c = torch.where(torch.randn(3, 6) > 0, 1.0, -1.0).double()
    assert torch.autograd.gradcheck(lambda v: center_loss(v, torch.tensor([0, 1, 2, 0]), c), (x,))


def test_orthohash_loss_hand_values_and_gradient():
    from gdf_pyg.nn.losses import orthohash_loss

    centers = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h = torch.tensor([[0.5, 0.5]])  # cos 1 to class 0, cos 0 to class 1
    s, m = 8.0, 0.2
    expected = -math.log(math.exp(s * (1 - m)) / (math.exp(s * (1 - m)) + math.exp(0.0)))
    assert orthohash_loss(h, torch.tensor([0]), centers, s, m).item() == pytest.approx(expected, rel=1e-4)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    c = torch.where(torch.randn(3, 6) > 0, 1.0, -1.0).double()
    assert torch.autograd.gradcheck(lambda v: orthohash_loss(v, torch.tensor([0, 1, 2, 0]), c), (x,))


def test_gdf_loss_with_class_targets_trains_codes_toward_their_centers():
    torch.manual_seed(0)
    loss_fn = GDFLoss(LossWeights(classification=0.0, center=1.0, orthohash=1.0))
    labels = torch.arange(4).repeat(4)
    raw = torch.randn(16, 12, requires_grad=True)
    logits = torch.zeros(16, 4)  # 4 classes: the centers come from the logits' width
    optimizer = torch.optim.Adam([raw], lr=0.1)
    for _ in range(100):
        terms = loss_fn(raw.tanh(), logits, labels)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    assert set(terms) == {"quantization", "balance", "center", "orthohash", "loss"}
    centers = loss_fn.centers(4, 12, raw.device)
    assert torch.equal(torch.where(raw >= 0, 1.0, -1.0), centers[labels])


def test_distillation_loss_hand_values_and_gradient():
    from gdf_pyg.nn.losses import distillation_loss

    z = torch.tensor([[1.0, 2.0, 0.5]])
    assert distillation_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # T = 1: KL(p || q) with p = softmax(t), q = softmax(s), by hand
    s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]], requires_grad=True)  # p = (1/4, 3/4)
    want = 0.25 * torch.log(torch.tensor(0.25 / 0.5)) + 0.75 * torch.log(torch.tensor(0.75 / 0.5))
    loss = distillation_loss(s, t, temperature=1.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    # d KL / d s = q - p, and the teacher gets no gradient
    torch.testing.assert_close(s.grad, torch.tensor([[0.5 - 0.25, 0.5 - 0.75]]))
    assert t.grad is None
    # T^2 scaling: at T = 2 the logits are halved inside and the loss multiplied by 4
    assert distillation_loss(2 * s.detach(), 2 * t.detach(), 2.0).item() == pytest.approx(4 * want.item(), rel=1e-6)


def test_distillation_loss_errors():
    from gdf_pyg.nn.losses import distillation_loss

    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_similarity_preserving_loss_against_a_hand_computation_and_its_gradient():
    from gdf_pyg.nn.losses import similarity_preserving_loss

    torch.manual_seed(0)
    h = torch.tanh(torch.randn(5, 8, dtype=torch.float64)).requires_grad_()
    teacher = 100.0 + torch.randn(5, 6, dtype=torch.float64)  # a large shared offset, as frozen features have
    loss = similarity_preserving_loss(h, teacher)
    t = teacher - teacher.mean(0)
    t = t / t.norm(dim=1, keepdim=True)
    expected = sum(((h[i] @ h[j]) / 8 - t[i] @ t[j]) ** 2 for i in range(5) for j in range(5) if i != j) / 20
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert h.grad.abs().sum() > 0
    # codes whose normalised inner products are the teacher's centred cosines cost nothing
    perfect = torch.cat([t, torch.zeros(5, 2, dtype=torch.float64)], 1) * (8 ** 0.5)
    assert similarity_preserving_loss(perfect, teacher) < 1e-20
    with pytest.raises(ValueError, match=r"teacher must have shape \(5, features\)"):
        similarity_preserving_loss(h, teacher[:3])


def test_gdf_loss_adds_the_similarity_term_only_with_a_teacher():
    from gdf_pyg.nn.losses import GDFLoss, LossWeights, similarity_preserving_loss

    codes, logits, labels = torch.tanh(torch.randn(4, 12)), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    teacher = torch.randn(4, 7)
    loss = GDFLoss(LossWeights(similarity=2.0))
    with_teacher = loss(codes, logits, labels, teacher=teacher)
    torch.testing.assert_close(with_teacher["similarity"], 2.0 * similarity_preserving_loss(codes, teacher))
    assert "similarity" not in loss(codes, logits, labels)


def test_gdf_loss_keeps_the_teachers_similarities_in_the_similarity_bits_alone():
    from gdf_pyg.nn.losses import GDFLoss, LossWeights, similarity_preserving_loss

    codes = torch.tanh(torch.randn(5, 12)).requires_grad_()
    logits, labels, teacher = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), torch.randn(5, 7)
    loss = GDFLoss(LossWeights(classification=0.0, quantization=0.0, balance=0.0, similarity=1.0))
    terms = loss(codes, logits, labels, teacher=teacher, similarity_bits=4)
    torch.testing.assert_close(terms["similarity"], similarity_preserving_loss(codes[:, 8:], teacher))
    terms["loss"].backward()
    assert codes.grad[:, :8].abs().max() == 0 and codes.grad[:, 8:].abs().max() > 0


def test_similarity_preserving_loss_with_labels_makes_a_class_one_code():
    from gdf_pyg.nn.losses import similarity_preserving_loss

    torch.manual_seed(0)
    h, teacher, labels = torch.tanh(torch.randn(5, 8)), torch.randn(5, 6), torch.tensor([0, 1, 0, 2, 1])
    t = torch.nn.functional.normalize(teacher - teacher.mean(0), dim=1)
    target = t @ t.T
    same = labels[:, None] == labels[None, :]
    target[same] = 1.0
    want = sum(((h[i] @ h[j]) / 8 - target[i, j]) ** 2 for i in range(5) for j in range(5) if i != j) / 20
    torch.testing.assert_close(similarity_preserving_loss(h, teacher, labels), want)
    with pytest.raises(ValueError, match="labels has 4 rows for 5 codes"):
        similarity_preserving_loss(h, teacher, labels[:4])
