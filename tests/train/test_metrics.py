"""Top-k error on a hand-made case; the paper's 10-crop averaging; the confusion matrix."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zfnet.train import confusion_matrix, evaluate, per_class_accuracy, topk_error


def test_topk_error_hand_made() -> None:
    logits = torch.tensor([
        [0.1, 0.9, 0.0, 0.0],  # pred 1; target 1 -> top1 ok
        [0.5, 0.2, 0.3, 0.0],  # order 0,2,1,3; target 2 -> top1 wrong, top2 ok
        [0.0, 0.1, 0.2, 0.7],  # order 3,2,1,0; target 0 -> wrong until k=4
        [0.3, 0.4, 0.2, 0.1],  # order 1,0,2,3; target 2 -> top3 ok
    ])
    targets = torch.tensor([1, 2, 0, 2])
    assert topk_error(logits, targets, 1) == pytest.approx(3 / 4)
    assert topk_error(logits, targets, 2) == pytest.approx(2 / 4)
    assert topk_error(logits, targets, 3) == pytest.approx(1 / 4)
    assert topk_error(logits, targets, 4) == 0.0
    assert topk_error(logits, targets, 5) == 0.0  # k > classes: every target is in the top k
    with pytest.raises(ValueError, match="targets"):
        topk_error(logits, targets[:3], 1)


def test_confusion_and_per_class() -> None:
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 4)
    assert cm.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert per_class_accuracy(cm) == [1.0, 1.0, 0.5, None]


class CropScorer(nn.Module):
    """Logits = the mean of each of 3 channels: a crop's score is set by its pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + self.dummy  # (N, 3)


def test_ten_crop_averages_softmax() -> None:
    """One image whose 10 crops disagree: 4 crops say class 0 very confidently, 6 say class 1
    weakly. Averaging softmaxes (the paper) picks 0; a majority vote or a single crop picks 1."""
    x = torch.zeros(1, 10, 3, 2, 2)  # (N, 10, C, S, S)
    x[0, :4, 0] = 10.0
    x[0, 4:, 1] = 0.5
    y = torch.tensor([0])
    loader = DataLoader(TensorDataset(x, y), batch_size=1)
    r = evaluate(CropScorer(), loader, num_classes=3)
    probs = x.mean(dim=(3, 4)).softmax(-1).mean(1)  # (1, 3) by hand
    assert probs.argmax(1).item() == 0
    assert r["top1_error"] == 0.0 and r["confusion"][0, 0] == 1
    assert r["loss"] == pytest.approx(-probs[0, 0].log().item(), rel=1e-5)
    centre = DataLoader(TensorDataset(x[:, 4], y), batch_size=1)  # the centre crop alone
    assert evaluate(CropScorer(), centre, num_classes=3)["top1_error"] == 1.0


def test_evaluate_runs_in_eval_mode_and_gives_the_model_back_as_it_was() -> None:
    """Dropout off while scoring (the loss is that of the plain linear layer), and a model in
    training mode with one submodule in eval mode comes back so."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(12, 3), nn.Dropout(0.9))
    model.train()
    model[3].eval()
    before = [m.training for m in model.modules()]
    x, y = torch.randn(8, 3, 2, 2), torch.arange(8) % 3
    r = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=4), num_classes=3)
    with torch.no_grad():
        want = F.cross_entropy(model[2](x.flatten(1)), y).item()
    assert r["loss"] == pytest.approx(want, rel=1e-5)
    assert [m.training for m in model.modules()] == before
