"""Cross-process operators on 2 real processes (gloo), against single-process float64 references."""
from __future__ import annotations

import torch

from gdf_pyg.nn.sync import GlobalBatchNorm, all_gather_cat

from ..conftest import run_in_processes

ROWS = (5, 3)


def _gather(rank, world, rows):
    results = []
    for known in (None, rows):  # shapes exchanged, or every process's rows given by the caller
        x = torch.arange(rows[rank] * 2, dtype=torch.float32).view(-1, 2) + 100 * rank
        x.requires_grad_(True)
        out = all_gather_cat(x, known)
        weights = torch.arange(out.numel(), dtype=torch.float32).view_as(out)
        (out * weights).sum().backward()  # every process computes the same loss of the whole batch
        results.append((out.detach(), x.grad))
    try:
        all_gather_cat(torch.zeros(rows[rank] + 1, 2), rows)
    except ValueError as err:
        results.append(str(err))
    return results


def test_all_gather_cat_of_unequal_and_empty_shards():
    for rows in ((3, 1), (2, 0), (0, 2)):
        expected = torch.cat([torch.arange(n * 2, dtype=torch.float32).view(-1, 2) + 100 * r
                              for r, n in enumerate(rows)])
        weights = torch.arange(expected.numel(), dtype=torch.float32).view_as(expected)
        for rank, (exchanged, given, error) in enumerate(run_in_processes(_gather, rows)):
            for out, grad in (exchanged, given):
                assert torch.equal(out, expected)
                # Each process receives the sum over processes of d(loss)/d(its rows): 2x the weights,
                # which DDP's average over 2 processes turns back into the single-process gradient.
                start = sum(rows[:rank])
                assert torch.equal(grad, 2 * weights[start:start + rows[rank]])
            assert error == (f"all_gather_cat: rows {list(rows)} do not match this process's {rows[rank] + 1} rows "
                             f"(rank {rank} of 2)")


def _features(n=8, channels=6):
    g = torch.Generator().manual_seed(1)
    # Mean 1e3, spread 1: where E[x^2] - mean^2 cancels.
    return 1e3 + torch.randn(n, channels, generator=g, dtype=torch.float64), torch.randn(n, channels, generator=g,
                                                                                         dtype=torch.float64)


def _norm(rank, world, rows):
    x, w = _features()
    start = sum(rows[:rank])
    local = x[start:start + rows[rank]].float().requires_grad_(True)
    bn = GlobalBatchNorm(x.size(1), momentum=0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, x.size(1)))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, x.size(1)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bn(local)
    (out.double() * w[start:start + rows[rank]]).sum().backward()
    return out.detach().double(), local.grad.double(), bn.running_mean.double(), bn.running_var.double()


def test_global_batch_norm_matches_float64_reference_under_bf16_autocast():
    x, w = _features()
    ref_in = x.clone().requires_grad_(True)
    ref_bn = torch.nn.BatchNorm1d(x.size(1), momentum=0.5).double()
    with torch.no_grad():
        ref_bn.weight.copy_(torch.linspace(0.5, 2.0, x.size(1)))
        ref_bn.bias.copy_(torch.linspace(-1.0, 1.0, x.size(1)))
    ref = ref_bn(ref_in)
    (ref * w).sum().backward()
    for rows in (ROWS, (8, 0)):
        parts = run_in_processes(_norm, rows)
        out = torch.cat([p[0] for p in parts])
        grad = torch.cat([p[1] for p in parts])
        # float32 inputs near 1e3 carry 6e-5 of rounding: the normalised values are that close.
        assert torch.allclose(out, ref.detach(), atol=2e-4), (out - ref).abs().max()
        assert torch.allclose(grad, ref_in.grad, atol=2e-4), (grad - ref_in.grad).abs().max()
        for running_mean, running_var in ((p[2], p[3]) for p in parts):
            assert torch.allclose(running_mean, ref_bn.running_mean, atol=1e-3)
            assert torch.allclose(running_var, ref_bn.running_var, rtol=1e-3)


def test_global_batch_norm_is_batch_norm_in_one_process():
    x = torch.randn(6, 4, 3)
    bn, ref = GlobalBatchNorm(4), torch.nn.BatchNorm1d(4)
    assert torch.allclose(bn(x), ref(x)) and torch.allclose(bn.running_var, ref.running_var)


def test_conversion_keeps_timm_fused_activations():
    import timm

    from gdf_pyg.nn.sync import convert_batchnorm

    model = timm.create_model("test_efficientnet", pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    converted = convert_batchnorm(model)
    assert not any(type(m) is torch.nn.BatchNorm2d or type(m).__name__ == "BatchNormAct2d" for m in converted.modules())
    assert torch.allclose(converted(x), ref, atol=1e-6)
    assert converted.state_dict().keys() == timm.create_model("test_efficientnet").state_dict().keys()
