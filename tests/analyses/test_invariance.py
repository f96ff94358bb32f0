"""Invariance sweeps (Fig. 5)."""

import numpy as np
import pytest
import torch

import zfnet
from zfnet.analyses.invariance import invariance, transform_images


def test_transforms_move_pixels_as_said() -> None:
    img = torch.zeros(1, 1, 40, 40)
    img[0, 0, 10, 20] = 255.0
    down = transform_images(img, "translate", 0.25)
    assert down[0, 0].argmax().item() == 20 * 40 + 20  # 10 px lower
    rot = transform_images(img, "rotate", 180)
    y, x = divmod(rot[0, 0].argmax().item(), 40)
    assert abs(y - 29) <= 1 and abs(x - 19) <= 1
    assert torch.allclose(transform_images(img, "scale", 1.0), img, atol=1e-3)
    with pytest.raises(ValueError, match="valid: translate, scale, rotate"):
        transform_images(img, "shear", 1)


def test_invariance_identity_is_zero_and_hooks_removed() -> None:
    torch.manual_seed(0)
    model = zfnet.create_model("zfnet_small", input_size=32)
    imgs = torch.rand(3, 3, 32, 32) * 255
    res = invariance(model, imgs, lambda x: x - 128, "rotate", values=[0, 90], labels=[1, 2, 3])
    assert res.distance["norm1"].shape == (3, 2) and res.prob.shape == (3, 2)
    assert torch.allclose(res.distance["norm1"][:, 0], torch.zeros(3), atol=1e-6)
    assert torch.allclose(res.distance["relu7"][:, 0], torch.zeros(3), atol=1e-6)
    assert (res.distance["norm1"][:, 1] > 0.01).all()
    p0 = model.eval()(imgs - 128).softmax(1)[torch.arange(3), torch.tensor([1, 2, 3])]
    assert torch.allclose(res.prob[:, 0], p0, atol=1e-6)
    assert res.labels == [1, 2, 3]
    for m in model.modules():
        assert not m._forward_hooks


def test_invariance_section_writes_figures(tmp_path) -> None:
    from zfnet.analyses.invariance import invariance_section
    from zfnet.report import read_sections

    model = zfnet.create_model("zfnet_small", input_size=32)
    imgs = torch.rand(2, 3, 32, 32) * 255
    res = [invariance(model, imgs, lambda x: x - 128, k, values=v)
           for k, v in (("translate", [0, 0.1]), ("scale", [1, 1.2]), ("rotate", [0, 45]))]
    invariance_section(tmp_path, res, ["a", "b"])
    (s,) = read_sections(tmp_path)
    assert len(s.figures) == 3 and len(s.tables[0].rows) == 3
    assert "at a low layer (norm1, the paper's layer 1) and a high one (relu7, layer 7)" \
        in s.caption  # the layers compared, by name
    assert "lowest p(class)" in s.tables[0].caption
    # any layers: a panel and a column each, named as chosen
    res = [invariance(model, imgs, lambda x: x - 128, "rotate", values=[0, 45],
                      layers=["conv1", "conv3", "fc6"])]
    invariance_section(tmp_path, res, ["a", "b"], key="chosen", paper_layers=False)
    s = {x.key: x for x in read_sections(tmp_path)}["chosen"]
    assert s.tables[0].columns == ["transformation", "mean distance conv1",
                                   "mean distance conv3", "mean distance fc6",
                                   "mean min p(class)"]
    assert "at the layers conv1, conv3, fc6 (the paper compares its layers 1 and 7)" in s.caption



def test_the_legend_names_the_class_each_image_is_followed_as(tmp_path, monkeypatch) -> None:
    """p(class) of which class: each image's curve is named with it (the model's class name,
    else its number), where the legend named the image alone."""
    from zfnet.analyses import invariance as module
    from zfnet.report import plots

    model = zfnet.create_model("zfnet_small", input_size=32, num_classes=3)
    imgs = torch.rand(2, 3, 32, 32) * 255
    res = [invariance(model, imgs, lambda x: x - 128, "rotate", values=[0, 45], labels=[2, 0])]
    drawn = []
    real = plots.plot_curves
    monkeypatch.setattr(plots, "plot_curves",
                        lambda x, panels, *a, **k: drawn.append(panels) or real(x, panels, *a,
                                                                                 **k))
    module.invariance_section(tmp_path, res, ["a", "b"], class_names=["cat", "dog", "owl"])
    module.invariance_section(tmp_path, res, ["a", "b"], key="unnamed")
    assert list(drawn[0]["p(class)"]) == ["a: p(owl)", "b: p(cat)"]
    assert list(drawn[1]["p(class)"]) == ["a: p(class 2)", "b: p(class 0)"]


def test_any_cnn_default_layers_and_its_own_class() -> None:
    """A ResNet's "layer 1" and "layer 7": its stem conv and the pooled vector its classifier
    reads; without labels the class followed is its prediction; a label that is not one of
    its classes is refused."""
    import torchvision

    from zfnet.analyses.invariance import default_layers

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    assert default_layers(model, 32) == ("relu", "avgpool")
    assert default_layers(zfnet.create_model("zfnet_small")) == ("norm1", "relu7")
    imgs = torch.rand(2, 3, 32, 32) * 255
    res = invariance(model, imgs, lambda x: (x - 128) / 64, "translate", values=[0, 0.2],
                     layers=None)
    assert res.layers == ["relu", "avgpool"]
    assert torch.allclose(res.distance["avgpool"][:, 0], torch.zeros(2), atol=1e-6)
    assert (res.distance["relu"][:, 1] > 0.01).all()
    logits = model.eval()((imgs - 128) / 64)
    assert res.labels == logits.argmax(1).tolist()
    with pytest.raises(ValueError, match=r"label\(s\) \[7\] are not classes of this model"):
        invariance(model, imgs, lambda x: x, "rotate", values=[0], layers=None, labels=[1, 7])


def test_the_images_are_shown_at_some_amounts_before_their_curves(tmp_path) -> None:
    """Fig. 5's first column: with the images, each transformation's curves follow a figure of
    the images at a few of its amounts (the untransformed one among them), one row an image."""
    from PIL import Image

    from zfnet.analyses.invariance import example_values, invariance_section
    from zfnet.report import read_sections

    assert example_values("scale", [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]) \
        == [0.6, 0.8, 1.0, 1.4, 1.6]
    assert example_values("rotate", [float(a) for a in range(0, 361, 30)]) \
        == [0, 90, 180, 270]  # 360 is 0 again
    assert example_values("translate", [0.0, 0.1]) == [0.0, 0.1]
    model = zfnet.create_model("zfnet_small", input_size=32)
    imgs = torch.zeros(2, 3, 32, 32)
    imgs[1] = 255.0  # one black image, one white: rows told apart by their pixels
    res = [invariance(model, imgs, lambda x: x - 128, k, values=v)
           for k, v in (("translate", [0, 0.1]), ("scale", [1, 1.2]), ("rotate", [0, 45]))]
    invariance_section(tmp_path, res, ["dark", "light"], images=imgs)
    (s,) = read_sections(tmp_path)
    assert [f.path for f in s.figures] == [
        f"figures/invariance_{k}{part}.png" for k in ("translate", "scale", "rotate")
        for part in ("_examples", "")]
    assert "the paper's first column" in s.caption
    grid = np.asarray(Image.open(tmp_path / "figures" / "invariance_rotate_examples.png")
                      .convert("L"))
    h = grid.shape[0]
    # the black image's row above the white one's, shown as it is (no contrast stretch)
    assert grid[: h // 2].mean() < 128 < grid[h // 2:].mean()
    invariance_section(tmp_path, res, ["dark", "light"], key="curves")  # without: curves only
    s = {x.key: x for x in read_sections(tmp_path)}["curves"]
    assert len(s.figures) == 3 and "first column" not in s.caption


def test_any_model_by_default_and_one_layer_by_its_name() -> None:
    """The default layers were zfnet's names ("layer 'norm1' does not exist in ResNet"): now
    the paper's layers 1 and 7 of any model; a single name is one layer, not its letters."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    imgs = torch.rand(2, 3, 64, 64) * 255
    r = invariance(model, imgs, lambda p: (p - 128) / 64, "rotate", values=[0, 90])
    assert list(r.layers) == ["relu", "avgpool"]
    one = invariance(model, imgs, lambda p: (p - 128) / 64, "rotate", values=[0, 90],
                     layers="layer2")
    assert list(one.layers) == ["layer2"]
