"""Linear probes (Table 7) and transfer on a case where the answer is known."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zfnet
from zfnet.activations import get_activations
from zfnet.analyses.probes import extract_features, fit_linear, linear_probes, transfer


def _batches(x: torch.Tensor, y: torch.Tensor, bs: int = 16) -> list:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def _separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, 32, 32, generator=g) * 20
    x[y == 1, 0] += 60  # class 1: much redder — any layer should see it
    return x, y


def test_probes_find_a_separable_signal() -> None:
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32, num_classes=2)
    tr, te = _separable(40, 0), _separable(40, 1)
    rows = linear_probes(model, _batches(*tr), _batches(*te), layers=("pool1", "relu7"))
    assert [r.layer for r in rows] == ["pool1", "relu7"]
    assert rows[0].dim == 48 * 4 and rows[1].dim == 512
    for r in rows:
        assert set(r.accuracy) == {"softmax", "svm"}
        assert r.accuracy["softmax"] >= 0.9, r
    acc = transfer(model, _batches(*tr), _batches(*te), layer="pool1")
    assert acc >= 0.9


def test_extract_features_order_and_labels() -> None:
    """Row i is image i's feature (fc: as is; conv: average-pooled to 2x2), over batches of 3."""
    model = zfnet.create_model("zfnet_small", input_size=32)
    x, y = _separable(10, 2)
    f, labels = extract_features(model, _batches(x, y, 3), ["relu6", "conv5"])
    assert f["relu6"].shape == (10, 512) and np.array_equal(labels, y.numpy())
    want = get_activations(model.eval(), x, ["relu6", "conv5"])
    np.testing.assert_allclose(f["relu6"], want["relu6"].numpy(), rtol=1e-5, atol=1e-5)
    pooled = F.adaptive_avg_pool2d(want["conv5"], 2).flatten(1).numpy()  # (10, C * 4)
    np.testing.assert_allclose(f["conv5"], pooled, rtol=1e-5, atol=1e-5)


def test_unknown_classifier() -> None:
    with pytest.raises(ValueError, match="valid: softmax, svm"):
        fit_linear("knn", np.zeros((2, 1)), np.array([0, 1]), np.zeros((2, 1)), np.array([0, 1]))


def test_probes_section(tmp_path) -> None:
    from zfnet.analyses.probes import ProbeRow, probes_section
    from zfnet.report import read_sections

    probes_section(tmp_path, [ProbeRow("pool1", 192, {"softmax": 0.5, "svm": 0.4})], 10, "x",
                   n_test=300)
    (s,) = read_sections(tmp_path)
    assert s.tables[0].rows == [["pool1", 192, "50.0%", "40.0%"]]
    paper = s.tables[1]  # the paper's Table 7 beside ours (transfer is its own section)
    assert paper.rows[0] == ["SVM (1)", "44.8%", "24.6%"]  # PAPER.md
    assert paper.rows[-3:] == [["SVM (7)", "85.5%", "71.7%"], ["Softmax (5)", "82.9%", "65.7%"],
                               ["Softmax (7)", "85.4%", "72.6%"]] and len(s.tables) == 2
    assert s.title == "Features per layer (Table 7)"  # transfer is its own section
    assert "tested on 300 held-out images" in s.tables[0].caption
    assert "tested on 300 held-out images" in s.caption
    assert "transfer" not in s.caption.lower()


def test_probes_on_any_cnn() -> None:
    """A ResNet's stages and the pooled vector its classifier reads; a 1x1 map is taken as it
    is (not replicated to 2x2); the dataset's labels, whatever the model's classes."""
    import torchvision

    from zfnet.analyses.probes import probe_layers

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)  # 1000 classes, 2 in the data
    layers = probe_layers(model, 32)
    assert layers == ["relu", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    assert probe_layers(zfnet.create_model("zfnet_small")) == [
        "pool1", "pool2", "relu3", "relu4", "pool5", "relu6", "relu7"]
    x, y = _separable(12, 3)
    f, _ = extract_features(model, _batches(x, y, 5), ["avgpool", "layer4"])
    assert f["avgpool"].shape == (12, 512) and f["layer4"].shape == (12, 512)  # 1x1 at 32 px
    tr, te = _separable(40, 0), _separable(40, 1)
    rows = linear_probes(model, _batches(*tr), _batches(*te), ("conv1", "avgpool"),
                         ("softmax",))
    assert rows[0].accuracy["softmax"] >= 0.9


@pytest.mark.parametrize("progress", [False, True])
def test_the_command_draws_a_bar_over_each_splits_features(tmp_path, capsys, progress) -> None:
    """`zfnet analyze probes` on a terminal: a bar over the training and the test images'
    batches (ImageNet's 20 a class are 20,000 images through the model); none otherwise."""
    from zfnet import pipeline

    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", num_classes=10, input_size=32)
    rows = pipeline.probes(model, "synthetic?n_train=40&n_val=20&size=32", tmp_path,
                           per_class=2, batch_size=8, progress=progress)
    assert len(rows) == 7
    err = capsys.readouterr().err
    for split, n in (("training", 3), ("test", 3)):  # 20 and 20 images, 8 a batch
        assert (f"{split} images' features" in err) == progress, err
        assert (f"0/{n} [" in err) == progress, err


def test_a_vision_transformer_is_probed_at_the_vector_its_classifier_reads() -> None:
    """A ViT has no stage with a spatial map: `analyze probes` stopped with "has no stage with
    a spatial map to show", where the probes need the classifier's input alone."""
    import timm

    from zfnet.analyses.probes import probe_layers

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                            num_classes=3).eval()
    assert probe_layers(vit, 32) == ["fc_norm"]
    feats, _ = extract_features(vit, [(torch.randn(4, 3, 32, 32), torch.arange(4))], ["fc_norm"])
    assert feats["fc_norm"].shape == (4, 192)
