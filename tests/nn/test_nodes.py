from __future__ import annotations

import pytest
import torch

from gdf_pyg.nn.nodes import AttentionPartNodes, SpatialNodes, grid_positions


def test_spatial_nodes_layout_and_positions():
    fmap = torch.randn(2, 5, 3, 4)
    nodes = SpatialNodes()(fmap)
    assert nodes.x.shape == (24, 5) and nodes.num_graphs == 2 and nodes.grid_size == (3, 4)
    # Node (b, y, x) is row b*12 + y*4 + x, holding fmap[b, :, y, x].
    torch.testing.assert_close(nodes.x[12 + 1 * 4 + 2], fmap[1, :, 1, 2])
    assert torch.equal(nodes.batch, torch.tensor([0] * 12 + [1] * 12))
    torch.testing.assert_close(nodes.pos[1 * 4 + 2], torch.tensor([1.5 / 3, 2.5 / 4]))
    assert repr(SpatialNodes(2)) == "SpatialNodes(grid_size=(2, 2))"


def test_spatial_nodes_pooling():
    fmap = torch.arange(16.0).view(1, 1, 4, 4)
    nodes = SpatialNodes(2)(fmap)
    assert nodes.grid_size == (2, 2)
    torch.testing.assert_close(nodes.x.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))
    with pytest.raises(ValueError, match="grid_size"):
        SpatialNodes(0)


def test_attention_part_nodes_bap_reference():
    torch.manual_seed(0)
    module = AttentionPartNodes(6, num_parts=3).eval()
    fmap = torch.randn(2, 6, 4, 5)
    nodes = module(fmap)
    assert nodes.x.shape == (6, 6) and nodes.pos.shape == (6, 2) and nodes.attention.shape == (2, 3, 4, 5)
    att = module.attention(fmap)
    # Reference: explicit loops over images, parts and cells.
    for b in range(2):
        for m in range(3):
            f = sum(att[b, m, y, x] * fmap[b, :, y, x] for y in range(4) for x in range(5)) / 20
            f = torch.sign(f) * torch.sqrt(f.abs() + 1e-6)
            torch.testing.assert_close(nodes.x[b * 3 + m], f / f.norm(), atol=1e-5, rtol=1e-5)
            w = att[b, m].flatten()
            cells = grid_positions(4, 5)
            if w.sum() > 0:
                torch.testing.assert_close(nodes.pos[b * 3 + m], (w[:, None] * cells).sum(0) / w.sum(), atol=1e-4, rtol=1e-4)
    assert repr(module) == "AttentionPartNodes(6, num_parts=3)"


def test_attention_part_nodes_gradients():
    module = AttentionPartNodes(4, num_parts=2)
    fmap = torch.rand(3, 4, 3, 3, requires_grad=True)
    nodes = module(fmap)
    weights = torch.randn_like(nodes.x)  # a sum alone is blind to the normalisation of each part
    ((nodes.x * weights).sum() + nodes.pos.square().sum()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # the attention learns from both outputs
    assert fmap.grad.abs().sum() > 0
