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
    u = None
    if head.class_classifier is not None:
        u = x @ head.class_classifier.weight.t() + head.class_classifier.bias
        x = torch.exp(u) / torch.exp(u).sum(1, keepdim=True)
    scale = head.posterior_scale if u is not None else 1.0
    h = torch.tanh(scale * (x @ head.hash.weight.t() + head.hash.bias))
    return h, h @ head.classifier.weight.t() + head.classifier.bias, u


@pytest.mark.parametrize("hidden,hash_input", [(0, "features"), (16, "features"), (0, "posterior"), (16, "posterior")])
def test_forward_matches_the_formula(hidden, hash_input):
    torch.manual_seed(0)
    head = HashHead(8, bits=12, num_classes=5, hidden_channels=hidden, hash_input=hash_input, posterior_scale=2.5)
    head.train()
    head(torch.randn(32, 8) * 3 + 1)  # moves the running statistics off their defaults
    head.eval()
    f = torch.randn(6, 8)
    codes, logits, class_logits = head(f)
    want_codes, want_logits, want_class_logits = _manual(head, f)
    assert codes.shape == (6, 12) and logits.shape == (6, 5)
    torch.testing.assert_close(codes, want_codes)
    torch.testing.assert_close(logits, want_logits)
    if hash_input == "features":
        assert class_logits is None
    else:
        assert class_logits.shape == (6, 5)
        torch.testing.assert_close(class_logits, want_class_logits)
    assert codes.abs().max() < 1


def test_posterior_codes_are_the_predicted_class_code():
    # a confident class posterior makes the code tanh(s (W_h[:, c] + b_h)), the class's learned code
    torch.manual_seed(0)
    head = HashHead(4, bits=6, num_classes=3, hash_input="posterior").eval()
    with torch.no_grad():
        head.class_classifier.weight.copy_(torch.tensor([[50.0, 0, 0, 0], [0, 50.0, 0, 0], [0, 0, 50.0, 0]]))
        head.class_classifier.bias.zero_()
    f = torch.eye(4)[:3]  # BN at its initial statistics passes these through (up to eps)
    codes, _, class_logits = head(f)
    assert class_logits.argmax(1).tolist() == [0, 1, 2]
    want = torch.tanh(3.0 * (head.hash.weight.t() + head.hash.bias))
    torch.testing.assert_close(codes, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("hash_input", ["features", "posterior"])
def test_every_parameter_trains(hash_input):
    torch.manual_seed(0)
    head = HashHead(8, bits=4, num_classes=3, hidden_channels=16, hash_input=hash_input)
    out = head(torch.randn(10, 8))
    loss = out.codes.sum() + out.logits.sum()
    if out.class_logits is not None:
        loss = loss + out.class_logits.pow(2).sum()
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_linear_head_keeps_its_state_dict_keys():
    # checkpoints written before the hidden layer existed load into hidden_channels=0 heads
    keys = set(HashHead(8, 12, 5).state_dict())
    assert not any(k.startswith(("hidden", "class_classifier")) for k in keys)
    assert {"hash.weight", "classifier.weight", "norm.running_mean"} <= keys
    posterior = HashHead(8, 12, 5, hash_input="posterior").state_dict()
    assert posterior["class_classifier.weight"].shape == (5, 8) and posterior["hash.weight"].shape == (12, 5)


def test_reset_parameters_and_repr():
    head = HashHead(8, 12, 5, hidden_channels=16, hash_input="posterior")
    before = head.hidden[0].weight.clone(), head.class_classifier.weight.clone()
    head.reset_parameters()
    assert not torch.equal(before[0], head.hidden[0].weight)
    assert not torch.equal(before[1], head.class_classifier.weight)
    assert repr(head) == "HashHead(8, bits=12, num_classes=5, hidden_channels=16, hash_input='posterior', posterior_scale=3)"
    assert repr(HashHead(8, 12, 5)) == "HashHead(8, bits=12, num_classes=5)"


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        HashHead(8, 0, 5)
    with pytest.raises(ValueError, match="hidden_channels"):
        HashHead(8, 12, 5, hidden_channels=-1)
    with pytest.raises(ValueError, match="hash_input must be one of \\('features', 'posterior'\\), got 'logits'"):
        HashHead(8, 12, 5, hash_input="logits")
    with pytest.raises(ValueError, match="posterior_scale must be > 0, got 0"):
        HashHead(8, 12, 5, hash_input="posterior", posterior_scale=0.0)


@pytest.mark.parametrize("hash_input", ["features", "posterior"])
def test_similarity_bits_add_the_features_hyperplanes_to_the_last_bits(hash_input):
    torch.manual_seed(0)
    head = HashHead(8, bits=12, num_classes=5, hidden_channels=16, hash_input=hash_input, similarity_bits=4)
    head.train()
    head(torch.randn(32, 8) * 3 + 1)
    head.eval()
    f = torch.randn(6, 8)
    codes, logits, _ = head(f)
    class_codes, _, _ = _manual(head, f)  # the codes without the similarity hyperplanes
    bn, (lin, bn2) = head.norm, head.hidden[:2]
    x = (f - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    x = torch.relu((x @ lin.weight.t() + lin.bias - bn2.running_mean) / torch.sqrt(bn2.running_var + bn2.eps)
                   * bn2.weight + bn2.bias)  # what the hash layer reads
    want = torch.tanh(torch.atanh(class_codes) + torch.cat([torch.zeros(6, 8), x @ head.similarity.weight.t()], 1))
    assert head.class_bits == 8 and codes.shape == (6, 12) and logits.shape == (6, 5)
    torch.testing.assert_close(codes[:, :8], class_codes[:, :8])
    torch.testing.assert_close(codes, want)
    torch.testing.assert_close(logits, codes @ head.classifier.weight.t() + head.classifier.bias)
    assert head.similarity.bias is None and "similarity_bits=4" in repr(head)
    with pytest.raises(ValueError, match="similarity_bits must be in \\[0, bits\\] = \\[0, 12\\], got 13"):
        HashHead(8, bits=12, num_classes=5, similarity_bits=13)
    every_bit = HashHead(8, bits=12, num_classes=5, hash_input="posterior", similarity_bits=12)
    assert every_bit.class_bits == 0 and every_bit(torch.randn(3, 8)).codes.shape == (3, 12)
    with pytest.raises(ValueError, match="similarity_bits"):
        HashHead(8, bits=12, num_classes=5, similarity_bits=-1)
