"""Pure classification metrics: top-k error (the paper's Tables 2-3), confusion matrix."""

from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: is the target among the k highest scores? scores (N, C), targets (N,).

    k larger than C counts every sample as correct (top-5 on a 4-class problem is trivial).
    """
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be (N, C) and targets (N,); got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (N, k)
    return (top == targets.view(-1, 1)).any(dim=1)


def topk_error(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose target is not among the k highest logits (0..1).

    logits (N, C) (or probabilities: only the order matters), targets (N,) class indices.
    """
    if logits.shape[0] == 0:
        raise ValueError("topk_error of an empty batch is undefined")
    return 1.0 - topk_correct(logits, targets, k).float().mean().item()


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class. On the inputs' device,
    without waiting for it (`bincount` on a GPU reads the largest index back first)."""
    idx = targets.long() * num_classes + preds.long()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=idx.device)
    return counts.index_add_(0, idx, torch.ones_like(idx)).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """Accuracy of each true class from a confusion matrix (None for a class with no samples)."""
    totals = confusion.sum(1)
    return [None if int(n) == 0 else float(confusion[i, i]) / float(n)
            for i, n in enumerate(totals)]
