from __future__ import annotations

import pytest
import torch

from gdf_pyg.training.config import TrainConfig

from ..conftest import TINY_RUN


@pytest.mark.parametrize("hash_input", ["posterior", "features"])
def test_the_report_adds_the_top1_accuracy_of_the_model_s_class_prediction(folder_root, hash_input):
    from gdf_pyg.models.gdfnet import GDFNet
    from gdf_pyg.training.run_data import build_run_data, run_evaluator
    from gdf_pyg.training.trainer import model_config_for

    torch.manual_seed(0)
    cfg = TrainConfig.load(overrides=[f"data.root={folder_root}", *TINY_RUN, f"model.hash_input={hash_input}",
                                      "eval.batch_size=2"])
    model = GDFNet(model_config_for(cfg, 12, 3)).eval()
    data = build_run_data(cfg, model.image_config)
    evaluator = run_evaluator(data, torch.device("cpu"), 2)
    report, _, test, train = evaluator.report(model, [5], 1)
    # the reference: the images one by one, the classifier the hash layer reads (posterior) or
    # the codes' classifier
    images = torch.stack([data.test_eval[i][0] for i in range(len(data.test_paths))])
    with torch.no_grad():
        out = model(images)
    scores = out.class_logits if hash_input == "posterior" else out.logits
    assert (out.class_logits is not None) == (hash_input == "posterior")
    labels = data.test_labels
    assert report["top1_accuracy"] == pytest.approx((scores.argmax(1) == labels).double().mean().item())
    # the codes of the report are the plain codes, with no column added
    assert torch.equal(test.values, torch.sign(out.codes)) and test.values.shape == (len(labels), 12)
    assert torch.equal(train.values, evaluator.codes(model, "train").values)
    # a classifier that always says the third class: the share of that class
    head = list(model.hash_heads())[0]
    classifier = head.class_classifier if hash_input == "posterior" else head.classifier
    classifier.bias.data = torch.tensor([0.0, 0.0, 1e4])
    assert evaluator.report(model, [5], 1)[0]["top1_accuracy"] == pytest.approx((labels == 2).double().mean().item())
