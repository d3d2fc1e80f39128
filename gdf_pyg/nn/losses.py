r"""Losses for deep hashing with relaxed codes :math:`\mathbf{h} \in [-1, 1]^K`.

All losses take a batch of codes :math:`\mathbf{H} \in \mathbb{R}^{B \times K}` (the
tanh-relaxed output of the hash layer) and return a scalar, averaged over the batch.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.checks import choice, require
from .sync import all_gather_cat

__all__ = [
    "CENTER_METHODS",
    "GDFLoss",
    "bit_balance_loss",
    "center_loss",
    "distillation_loss",
    "hadamard_matrix",
    "hash_centers",
    "orthohash_loss",
    "cauchy_distance",
    "cauchy_quantization_loss",
    "code_classification_loss",
    "pairwise_cauchy_loss",
    "similarity_from_labels",
    "similarity_preserving_loss",
]


def _check_codes(h: Tensor) -> None:
    if not isinstance(h, Tensor) or h.dim() != 2 or h.size(1) < 1:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(f"codes must have shape (batch, bits), got {shape}")


def _check_gamma(gamma: float) -> None:
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")


def cauchy_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    r"""The normalised Hamming-style distance of Deep Cauchy Hashing.

    .. math:: d(\mathbf{a}, \mathbf{b}) = \frac{K}{2}\big(1 - \cos(\mathbf{a}, \mathbf{b})\big)

    which equals the Hamming distance for :math:`\mathbf{a}, \mathbf{b} \in \{-1, +1\}^K`.
    Broadcasts over leading dimensions; returns shape ``a.shape[:-1]`` (broadcast with ``b``).
    """
    k = a.size(-1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)
    return 0.5 * k * (1.0 - cos)


def cauchy_quantization_loss(h: Tensor, gamma: float = 20.0) -> Tensor:
    r"""Cauchy quantization loss (Cao et al., "Deep Cauchy Hashing", CVPR 2018).

    .. math::
        \mathcal{L}_Q = \frac{1}{B} \sum_{i=1}^{B}
        \log\Big(1 + \frac{d(|\mathbf{h}_i|, \mathbf{1})}{\gamma}\Big), \qquad
        d(\mathbf{a}, \mathbf{b}) = \frac{K}{2}\big(1 - \cos(\mathbf{a}, \mathbf{b})\big)

    It is zero exactly when every :math:`|h_{ik}|` is equal (the codes are binary up to
    scale) and, unlike the squared loss :math:`\lVert |\mathbf{h}| - \mathbf{1} \rVert^2`,
    saturates for codes far from binary instead of dominating the objective.

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
        gamma (float): Cauchy scale :math:`\gamma > 0`. (default: :obj:`20.0`)
    """
    _check_codes(h)
    _check_gamma(gamma)
    d = cauchy_distance(h.abs(), torch.ones_like(h))
    return torch.log1p(d / gamma).mean()


def bit_balance_loss(h: Tensor) -> Tensor:
    r"""Bit-balance loss: each bit should be :math:`+1` on half of the batch.

    .. math::
        \mathcal{L}_B = \frac{1}{K} \sum_{k=1}^{K} \Big(\frac{1}{B}\sum_{i=1}^{B} h_{ik}\Big)^2

    computed on the relaxed codes, so the gradient
    :math:`\partial \mathcal{L}_B / \partial h_{ik} = \frac{2}{BK} \sum_{i'} h_{i'k} / B`
    reaches the network (a version built from :math:`\operatorname{sign}(\mathbf{h})`
    has zero gradient everywhere and does not train).

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
    """
    _check_codes(h)
    return h.mean(dim=0).pow(2).mean()


def similarity_from_labels(labels: Tensor, other: Optional[Tensor] = None) -> Tensor:
    r"""Pairwise similarity :math:`s_{ij} \in \{0, 1\}`: 1 when the items share a class.

    ``labels`` is either class indices :math:`(B,)` or multi-hot :math:`(B, C)`.
    """
    other = labels if other is None else other
    if labels.dim() == 1:
        return (labels.unsqueeze(1) == other.unsqueeze(0)).float()
    return ((labels.float() @ other.float().t()) > 0).float()


def pairwise_cauchy_loss(h: Tensor, labels: Tensor, gamma: float = 20.0, eps: float = 1e-6) -> Tensor:
    r"""Pairwise Cauchy cross-entropy of Deep Cauchy Hashing (Cao et al., CVPR 2018).

    With :math:`\sigma(d) = \gamma / (\gamma + d)` the probability that two codes at
    distance :math:`d` are similar, over all ordered pairs :math:`i \ne j` of the batch:

    .. math::
        \mathcal{L}_C = \frac{1}{|\mathcal{S}|} \sum_{i \ne j} w_{ij}\Big[
        s_{ij} \log\Big(1 + \frac{d_{ij}}{\gamma}\Big) +
        (1 - s_{ij}) \log\Big(1 + \frac{\gamma}{d_{ij}}\Big)\Big]

    with :math:`d_{ij} = d(\mathbf{h}_i, \mathbf{h}_j)` (see :func:`cauchy_distance`,
    clamped below by ``eps``), and class-balance weights
    :math:`w_{ij} = |\mathcal{S}| / |\mathcal{S}_1|` for similar and
    :math:`|\mathcal{S}| / |\mathcal{S}_0|` for dissimilar pairs.

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
        labels (Tensor): class indices :math:`(B,)` or multi-hot labels :math:`(B, C)`.
        gamma (float): Cauchy scale. (default: :obj:`20.0`)
    """
    _check_codes(h)
    _check_gamma(gamma)
    if labels.size(0) != h.size(0):
        raise ValueError(f"labels has {labels.size(0)} rows for {h.size(0)} codes")
    b = h.size(0)
    if b < 2:
        return h.sum() * 0.0
    # The pairs i != j weighted by an off-diagonal mask rather than selected by it: shapes stay
    # those of the batch (a boolean selection would make a GPU's host wait for its size).
    off_diag = 1.0 - torch.eye(b, dtype=h.dtype, device=h.device)
    s = similarity_from_labels(labels).to(h.dtype) * off_diag
    d = cauchy_distance(h.unsqueeze(1), h.unsqueeze(0)).clamp_min(eps)
    n_all = float(b * (b - 1))
    n_pos = s.sum()
    n_neg = n_all - n_pos
    w = torch.where(s > 0, n_all / n_pos.clamp_min(1.0), n_all / n_neg.clamp_min(1.0))
    terms = s * torch.log1p(d / gamma) + (off_diag - s) * torch.log1p(gamma / d)
    return (w * terms).sum() / n_all


def similarity_preserving_loss(h: Tensor, teacher: Tensor, labels: Optional[Tensor] = None,
                               eps: float = 1e-8) -> Tensor:
    r"""The codes' similarities follow a teacher's (e.g. the backbone's pooled features), so that
    photos of classes never trained on keep the neighbourhoods the backbone gives them.

    .. math::
        \mathcal{L}_S = \frac{1}{B(B-1)} \sum_{i \ne j} \Big(\frac{\mathbf{h}_i^\top \mathbf{h}_j}{K}
        - t_{ij}\Big)^2, \qquad
        t_{ij} = \cos(\mathbf{t}_i - \bar{\mathbf{t}}, \mathbf{t}_j - \bar{\mathbf{t}})

    with :math:`\bar{\mathbf{t}}` the batch mean of the teacher features (frozen features of a
    backbone share a large offset; their centred cosines spread over :math:`[-1, 1]` as the codes'
    normalised inner products do). Given ``labels``, pairs of one class have target
    :math:`t_{ij} = 1` (identical codes): the codes keep the teacher's similarities between classes
    and give a trained class one code, as a class code does. The teacher passes no gradient.

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
        teacher (Tensor): teacher features :math:`(B, C)`.
        labels (Tensor, optional): class labels :math:`(B,)`.
    """
    _check_codes(h)
    if teacher.dim() != 2 or teacher.size(0) != h.size(0):
        raise ValueError(f"teacher must have shape ({h.size(0)}, features), got {tuple(teacher.shape)}")
    b = h.size(0)
    if b < 2:
        return h.sum() * 0.0
    t = teacher.detach().to(h.dtype)
    t = F.normalize(t - t.mean(0, keepdim=True), dim=1, eps=eps)
    target = t @ t.t()
    if labels is not None:
        if labels.size(0) != b:
            raise ValueError(f"labels has {labels.size(0)} rows for {b} codes")
        same = similarity_from_labels(labels).to(h.dtype)
        target = same + (1.0 - same) * target
    off_diag = 1.0 - torch.eye(b, dtype=h.dtype, device=h.device)
    gap = (h @ h.t()) / h.size(1) - target
    return (gap.square() * off_diag).sum() / (b * (b - 1))


def code_classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    r"""Cross-entropy of the classifier on the codes,
    :math:`-\frac{1}{B}\sum_i \log \operatorname{softmax}(\mathbf{W}\mathbf{h}_i + \mathbf{c})_{y_i}`."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------
# Class targets: hash centers (CSQ) and orthogonal class codes (OrthoHash).
# --------------------------------------------------------------------------------------
CENTER_METHODS = ("hadamard", "random")


def _legendre(a: int, q: int) -> int:
    a %= q
    return 0 if a == 0 else (1 if pow(a, (q - 1) // 2, q) == 1 else -1)


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q**0.5) + 1))


def hadamard_matrix(n: int) -> Optional[Tensor]:
    r"""A Hadamard matrix of order ``n`` (:math:`\mathbf{H}\mathbf{H}^\top = n\mathbf{I}`,
    entries :math:`\pm 1`), or ``None`` when neither construction reaches ``n``.

    Sylvester's doubling :math:`\mathbf{H}_{2m} = \begin{bmatrix}\mathbf{H}_m & \mathbf{H}_m \\
    \mathbf{H}_m & -\mathbf{H}_m\end{bmatrix}` from orders 1 and Paley's construction I (order
    :math:`q + 1` for a prime :math:`q \equiv 3 \pmod 4`) cover the usual code lengths:
    12, 24 and 48 (Paley with :math:`q` = 11, 23, 47), 16, 32 and 64 (Sylvester).
    """
    if n < 1:
        return None
    m, doublings = n, 0
    while m % 2 == 0 and not (_is_prime(m - 1) and (m - 1) % 4 == 3):
        m //= 2
        doublings += 1
    if m == 1:
        h = torch.ones(1, 1)
    elif _is_prime(m - 1) and (m - 1) % 4 == 3:
        q = m - 1
        s = torch.zeros(m, m)
        s[0, 1:], s[1:, 0] = 1.0, -1.0
        s[1:, 1:] = torch.tensor([[float(_legendre(j - i, q)) for j in range(q)] for i in range(q)])
        h = torch.eye(m) + s  # I + S, S skew-symmetric: Paley I
    else:
        return None
    for _ in range(doublings):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hash_centers(num_classes: int, bits: int, method: str = "hadamard", seed: int = 0) -> Tensor:
    r"""One binary target code per class, :math:`(C, K)` in :math:`\{-1, +1\}`.

    ``"hadamard"`` (CSQ, Yuan et al., CVPR 2020): the rows of a Hadamard matrix of order
    :math:`K`, then of its negation, for up to :math:`2K` classes: any two centers are at least
    :math:`K/2` apart. With more classes, or no Hadamard matrix of order :math:`K`, the centers
    are codes drawn from ``seed`` as far apart as :func:`_spread_codes` finds (balanced where that
    costs no distance). ``"random"``: always those.
    """
    if method not in CENTER_METHODS:
        raise ValueError(f"unknown center method {method!r}; expected one of {CENTER_METHODS}")
    if num_classes < 1 or bits < 1:
        raise ValueError(f"num_classes and bits must be positive, got {num_classes}, {bits}")
    h = hadamard_matrix(bits) if method == "hadamard" else None
    if h is not None and num_classes <= 2 * bits:
        return torch.cat([h, -h])[:num_classes]
    return _spread_codes(num_classes, bits, seed)


def _first_fit(pool: Tensor, distance: int, limit: Optional[int] = None) -> Tensor:
    """The codes of ``pool`` (in order) that are ``distance`` or more apart from every code taken
    before them, up to ``limit`` of them."""
    bits = pool.size(1)
    free = torch.ones(len(pool), dtype=torch.bool)
    picked = []
    while limit is None or len(picked) < limit:
        left = free.nonzero()
        if not len(left):
            break
        i = int(left[0])
        picked.append(i)
        free &= (bits - pool @ pool[i]) / 2 >= distance
    return pool[picked]


def _widest_first_fit(pool: Tensor, count: int, limit: Optional[int] = None) -> Tuple[int, Tensor]:
    """The largest distance at which :func:`_first_fit` finds ``count`` codes, and the codes it
    finds there (up to ``limit``; by default exactly ``count``)."""
    for distance in range(pool.size(1), 0, -1):
        codes = _first_fit(pool, distance, count if limit is None else limit)
        if len(codes) >= count:
            return distance, codes
    return 0, pool[:0]


def _spread_codes(count: int, bits: int, seed: int) -> Tensor:
    """``count`` codes as far apart as a short code allows, from ``seed``.

    Balanced codes (``bits // 2`` ones: every bit splits the classes in half) are taken first-fit
    from a seeded shuffle of all of them (or of a random pool when they are too many) at the
    largest distance that still yields ``count`` codes. Below 17 bits the lexicode is tried too:
    the first-fit code over all :math:`2^K` words (e.g. 128 words 4 apart at 12 bits, where
    balanced words reach only 2), of which a seeded random ``count`` are taken (the first ones
    would share their leading bits), bits permuted and flipped by ``seed``. The farther apart of
    the two is kept, the balanced one on a tie.
    """
    g = torch.Generator().manual_seed(seed)
    if math.comb(bits, bits // 2) <= 4096:
        ones = torch.tensor(list(itertools.combinations(range(bits), bits // 2)), dtype=torch.long)
        pool = torch.full((len(ones), bits), -1.0).scatter_(1, ones, 1.0)
    else:
        pool = torch.where(torch.rand(max(8 * count, 4096), bits, generator=g).argsort(dim=1) < bits // 2, 1.0, -1.0)
    best, codes = _widest_first_fit(pool[torch.randperm(len(pool), generator=g)], count)
    if bits <= 16 and count <= 2**bits:
        words = ((torch.arange(2**bits).unsqueeze(1) >> torch.arange(bits - 1, -1, -1)) & 1) * 2.0 - 1.0
        distance, lexicode = _widest_first_fit(words, count, limit=len(words))  # the whole lexicode
        if distance > best:
            lexicode = lexicode[torch.randperm(len(lexicode), generator=g)[:count]]
            flips = torch.where(torch.rand(bits, generator=g) < 0.5, -1.0, 1.0)
            codes = lexicode[:, torch.randperm(bits, generator=g)] * flips
    if len(codes) < count:
        raise ValueError(f"cannot make {count} distinct codes of {bits} bits")
    return codes


def center_loss(h: Tensor, labels: Tensor, centers: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Central similarity (CSQ): binary cross-entropy of each relaxed bit to its class center's.

    .. math::
        \mathcal{L}_{CS} = -\frac{1}{BK} \sum_{i,k} \Big[\tfrac{1 + c_{y_i k}}{2}
        \log\tfrac{1 + h_{ik}}{2} + \tfrac{1 - c_{y_i k}}{2} \log\tfrac{1 - h_{ik}}{2}\Big]

    Args:
        h (Tensor): relaxed codes :math:`(B, K)` in :math:`(-1, 1)`.
        labels (Tensor): class ids :math:`(B,)`.
        centers (Tensor): :math:`(C, K)` in :math:`\{-1, +1\}` (:func:`hash_centers`).
    """
    _check_codes(h)
    target = (centers[labels] + 1.0) / 2.0
    p = ((h + 1.0) / 2.0).clamp(eps, 1.0 - eps)
    return F.binary_cross_entropy(p, target.to(p.dtype))


def orthohash_loss(h: Tensor, labels: Tensor, centers: Tensor, scale: float = 8.0, margin: float = 0.2) -> Tensor:
    r"""OrthoHash (Hoe et al., NeurIPS 2021): cross-entropy over classes of the cosine between the
    code and each class's orthogonal code, with an additive margin on the true class.

    .. math::
        \mathcal{L}_{O} = -\frac{1}{B} \sum_i \log
        \frac{e^{s(\cos(\mathbf{h}_i, \mathbf{c}_{y_i}) - m)}}
        {e^{s(\cos(\mathbf{h}_i, \mathbf{c}_{y_i}) - m)} + \sum_{j \ne y_i} e^{s \cos(\mathbf{h}_i, \mathbf{c}_j)}}

    Args:
        h (Tensor): relaxed codes :math:`(B, K)`.
        labels (Tensor): class ids :math:`(B,)`.
        centers (Tensor): class codes :math:`(C, K)` (:func:`hash_centers`).
        scale (float): :math:`s`. (default: :obj:`8.0`)
        margin (float): :math:`m`. (default: :obj:`0.2`)
    """
    _check_codes(h)
    cos = F.normalize(h, dim=1) @ F.normalize(centers.to(h.dtype), dim=1).t()
    cos = cos - margin * F.one_hot(labels, centers.size(0)).to(cos.dtype)
    return F.cross_entropy(scale * cos, labels)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    r"""Knowledge distillation (Hinton et al., 2015): the student's class distribution matches
    the teacher's, both softened by :math:`T`.

    .. math::
        \mathcal{L}_{KD} = \frac{T^2}{B} \sum_i \mathrm{KL}\big(\operatorname{softmax}(\mathbf{t}_i / T)
        \,\big\|\, \operatorname{softmax}(\mathbf{s}_i / T)\big)

    (:math:`T^2` keeps the gradient's scale independent of :math:`T`). The teacher passes no
    gradient.

    Args:
        student_logits (Tensor): :math:`(B, C)`.
        teacher_logits (Tensor): :math:`(B, C)`.
        temperature (float): :math:`T > 0`. (default: :obj:`2.0`)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


@dataclass
class LossWeights:
    """Weights of the terms of :class:`GDFLoss` (0 switches a term off), and their settings.

    ``center`` weighs the central-similarity loss to the class's hash center (CSQ),
    ``orthohash`` the OrthoHash loss against orthogonal class codes; both use the targets of
    :func:`hash_centers` (``centers`` method, ``center_seed``). ``posterior`` weighs the
    cross-entropy of the class classifier whose posterior a ``hash_input="posterior"`` head
    hashes (:class:`~gdf_pyg.nn.hash.HashHead`; no term for other heads). ``distill`` weighs,
    for heads of a shared encoder (``train.shared_encoder``), the :func:`distillation_loss` of
    each shorter head's logits to the longest head's, at ``distill_temperature``. ``similarity``
    weighs :func:`similarity_preserving_loss` of the codes to the backbone's pooled features (the
    model's ``GDFOutput.pooled``): codes that keep the backbone's neighbourhoods for classes never
    trained on; with ``similarity_classes`` the pairs of one class are identical in its target.
    """

    classification: float = 1.0
    posterior: float = 1.0
    quantization: float = 0.1
    balance: float = 0.1
    pairwise: float = 0.0
    center: float = 0.0
    orthohash: float = 0.0
    gamma: float = 20.0
    label_smoothing: float = 0.0
    centers: str = "hadamard"
    center_seed: int = 0
    ortho_scale: float = 8.0
    ortho_margin: float = 0.2
    distill: float = 0.0
    distill_temperature: float = 2.0
    similarity: float = 0.0
    similarity_classes: bool = False

    def validate(self, prefix: str = "loss") -> None:
        require(self.gamma > 0, f"{prefix}.gamma", f"must be > 0, got {self.gamma}")
        choice(self.centers, CENTER_METHODS, f"{prefix}.centers")
        require(self.ortho_scale > 0, f"{prefix}.ortho_scale", f"must be > 0, got {self.ortho_scale}")
        require(0 <= self.ortho_margin < 1, f"{prefix}.ortho_margin", f"must be in [0, 1), got {self.ortho_margin}")
        require(self.distill_temperature > 0, f"{prefix}.distill_temperature",
                f"must be > 0, got {self.distill_temperature}")
        for name in ("classification", "posterior", "quantization", "balance", "pairwise", "center", "orthohash",
                     "distill", "similarity"):
            require(getattr(self, name) >= 0, f"{prefix}.{name}", f"must be >= 0, got {getattr(self, name)}")
        require(0.0 <= self.label_smoothing < 1.0, f"{prefix}.label_smoothing",
                f"must be in [0, 1), got {self.label_smoothing}")


class GDFLoss(nn.Module):
    r"""The GDF-Net training objective on relaxed codes and code logits.

    .. math::
        \mathcal{L} = \lambda_{cls}\,\mathcal{L}_{CE} + \lambda_Q\,\mathcal{L}_Q
        + \lambda_B\,\mathcal{L}_B + \lambda_C\,\mathcal{L}_C + \lambda_{CS}\,\mathcal{L}_{CS}
        + \lambda_O\,\mathcal{L}_O

    (:func:`code_classification_loss`, :func:`cauchy_quantization_loss`,
    :func:`bit_balance_loss`, :func:`pairwise_cauchy_loss`, :func:`center_loss`,
    :func:`orthohash_loss`; the class targets of the last two come from :func:`hash_centers` for
    the logits' number of classes and the codes' length), plus, given ``class_logits`` (a
    ``hash_input="posterior"`` head), :math:`\lambda_P` times their cross-entropy, and given a
    ``teacher`` (the backbone's pooled features), :math:`\lambda_S` times
    :func:`similarity_preserving_loss` (of the codes' last ``similarity_bits`` bits when given, a
    head's :attr:`~gdf_pyg.nn.hash.HashHead.similarity_bits`; none for 0). ``forward``
    returns a dict with the total under ``"loss"`` and each weighted term. Under multi-process
    training every term is computed on the outputs of the whole global batch; ``shard_sizes``
    (every process's rows, when the caller knows them) spares the exchange of shapes, which reads
    back from the device.
    """

    def __init__(self, weights: Optional[LossWeights] = None) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        _check_gamma(self.weights.gamma)
        self._centers: Dict[Tuple[int, int, str], Tensor] = {}

    def centers(self, num_classes: int, bits: int, device: torch.device) -> Tensor:
        """The class targets for ``num_classes`` classes and ``bits`` bits (built once)."""
        key = (num_classes, bits, str(device))
        if key not in self._centers:
            self._centers[key] = hash_centers(num_classes, bits, self.weights.centers, self.weights.center_seed).to(device)
        return self._centers[key]

    def forward(self, codes: Tensor, logits: Tensor, labels: Tensor, class_logits: Optional[Tensor] = None,
                shard_sizes: Optional[Sequence[int]] = None, teacher: Optional[Tensor] = None,
                similarity_bits: Optional[int] = None) -> Dict[str, Tensor]:
        # Under multi-process training every term is computed on the outputs of the whole global
        # batch (gathered, differentiably; shards may differ in size, given by shard_sizes when the
        # caller knows them), so each process holds the single-process loss and DDP's averaged
        # gradients are the single-process ones.
        gather = lambda t: all_gather_cat(t, shard_sizes)  # noqa: E731
        codes, logits, labels = gather(codes), gather(logits), gather(labels)
        w = self.weights
        terms: Dict[str, Tensor] = {}
        if w.classification:
            terms["classification"] = w.classification * code_classification_loss(logits, labels, w.label_smoothing)
        if class_logits is not None and w.posterior:
            terms["posterior"] = w.posterior * F.cross_entropy(gather(class_logits), labels,
                                                                label_smoothing=w.label_smoothing)
        if w.quantization:
            terms["quantization"] = w.quantization * cauchy_quantization_loss(codes, w.gamma)
        if w.balance:
            terms["balance"] = w.balance * bit_balance_loss(codes)
        if w.pairwise:
            terms["pairwise"] = w.pairwise * pairwise_cauchy_loss(codes, labels, w.gamma)
        if w.similarity and teacher is not None and similarity_bits != 0:
            # a head with similarity bits (its last ones) keeps the teacher's similarities in those alone
            kept = codes if similarity_bits is None else codes[:, codes.size(1) - similarity_bits:]
            terms["similarity"] = w.similarity * similarity_preserving_loss(
                kept, gather(teacher), labels if w.similarity_classes else None)
        if w.center or w.orthohash:
            centers = self.centers(logits.size(1), codes.size(1), codes.device)
            if w.center:
                terms["center"] = w.center * center_loss(codes, labels, centers)
            if w.orthohash:
                terms["orthohash"] = w.orthohash * orthohash_loss(codes, labels, centers, w.ortho_scale, w.ortho_margin)
        terms["loss"] = sum(terms.values(), codes.new_zeros(()))
        return terms

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weights})"
