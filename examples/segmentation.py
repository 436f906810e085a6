"""Prune a small segmentation net with its own loss and score (synthetic data, about 20 s on one CPU core)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import prunekit


class SegNet(nn.Module):  # any nn.Module: prunekit never prunes the output (the per-pixel class map)
    def __init__(self, classes=2):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.body = nn.Sequential(block(1, 32), block(32, 64), block(64, 64))
        self.head = nn.Conv2d(64, classes, 1)

    def forward(self, x):
        return self.head(self.body(x))


def squares(n, seed):  # images with one bright square; the target is its mask
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 24, 24, generator=g) * 0.3, torch.zeros(n, 24, 24, dtype=torch.long)
    for i, (r, c) in enumerate(torch.randint(0, 16, (n, 2), generator=g).tolist()):
        x[i, 0, r : r + 8, c : c + 8] += 1.0
        y[i, r : r + 8, c : c + 8] = 1
    return TensorDataset(x, y)


def loss_fn(model, batch):  # the user's objective on a whole batch: per-pixel cross-entropy
    x, y = batch
    return F.cross_entropy(model(x), y)


def mean_iou(model, loader):  # the user's score, higher is better
    inter = union = 0
    for x, y in loader:
        pred = model(x).argmax(1)
        inter += ((pred == 1) & (y == 1)).sum().item()
        union += ((pred == 1) | (y == 1)).sum().item()
    return inter / max(union, 1)


torch.manual_seed(0)
train = DataLoader(squares(512, 0), batch_size=32, shuffle=True)
val = DataLoader(squares(128, 1), batch_size=64)
model = SegNet()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for _ in range(3):  # the user's own training loop
    for batch in train:
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()
model.eval()

pruned, plan = prunekit.prune(
    model,
    torch.randn(1, 1, 24, 24),
    method="magnitude",
    target={"macs_ratio": 0.5},
    train_loader=train,
    val_loader=val,
    loss_fn=loss_fn,
    eval_fn=mean_iou,
    finetune={"epochs": 2, "lr": 0.02},
)
with torch.no_grad():
    print(f"IoU {mean_iou(model, val):.3f} -> {mean_iou(pruned, val):.3f}")
    print(
        f"params {sum(p.numel() for p in model.parameters())} -> {sum(p.numel() for p in pruned.parameters())}"
    )

prunekit.save("segnet-pruned.safetensors", pruned, plan)
again = prunekit.restore("segnet-pruned.safetensors", SegNet)  # onto a freshly built SegNet
x = torch.randn(2, 1, 24, 24)
with torch.no_grad():
    assert torch.equal(again(x), pruned(x))
