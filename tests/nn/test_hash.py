import pytest
import torch

from gdf_pyg.nn.hash import HashHead


def _manual(head: HashHead, f: torch.Tensor):
    bn = head.norm
    x = (f - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    if head.hidden is not None:
        lin, bn2 = head.hidden[0], head.hidden[1]
        x = x @ lin.weight.t() + lin.bias
        x = torch.relu((x - bn2.running_mean) / torch.sqrt(bn2.running_var + bn2.eps) * bn2.weight + bn2.bias)
    h = torch.tanh(x @ head.hash.weight.t() + head.hash.bias)
    return h, h @ head.classifier.weight.t() + head.classifier.bias


@pytest.mark.parametrize("hidden", [0, 16])
def test_forward_matches_the_formula(hidden):
    torch.manual_seed(0)
    head = HashHead(8, bits=12, num_classes=5, hidden_channels=hidden)
    head.train()
    head(torch.randn(32, 8) * 3 + 1)  # moves the running statistics off their defaults
    head.eval()
    f = torch.randn(6, 8)
    codes, logits = head(f)
    want_codes, want_logits = _manual(head, f)
    assert codes.shape == (6, 12) and logits.shape == (6, 5)
    torch.testing.assert_close(codes, want_codes)
    torch.testing.assert_close(logits, want_logits)
    assert codes.abs().max() < 1


def test_hidden_layer_trains():
    torch.manual_seed(0)
    head = HashHead(8, bits=4, num_classes=3, hidden_channels=16)
    codes, logits = head(torch.randn(10, 8))
    (codes.sum() + logits.sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_linear_head_keeps_its_state_dict_keys():
    # checkpoints written before the hidden layer existed load into hidden_channels=0 heads
    keys = set(HashHead(8, 12, 5).state_dict())
    assert not any(k.startswith("hidden") for k in keys)
    assert {"hash.weight", "classifier.weight", "norm.running_mean"} <= keys


def test_reset_parameters_and_repr():
    head = HashHead(8, 12, 5, hidden_channels=16)
    before = head.hidden[0].weight.clone()
    head.reset_parameters()
    assert not torch.equal(before, head.hidden[0].weight)
    assert repr(head) == "HashHead(8, bits=12, num_classes=5, hidden_channels=16)"
    assert repr(HashHead(8, 12, 5)) == "HashHead(8, bits=12, num_classes=5)"


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        HashHead(8, 0, 5)
    with pytest.raises(ValueError, match="hidden_channels"):
        HashHead(8, 12, 5, hidden_channels=-1)
