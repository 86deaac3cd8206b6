"""PyTorch baseline for `linesweep bench model`: the same networks, batch sizes and synthetic
inputs, training step (forward, backward, SGD) and evaluation forward, in images/s.

Not part of the tests or CI. Run with a PyTorch install, e.g.
    python scripts/bench_torch.py --arch resnet20 --batch 128 --size 32 --steps 5
One JSON line per run, with the same keys as `linesweep bench model`.
"""
import argparse
import json
import time

import torch
import torch.nn as nn


class Block(nn.Module):
    """torchvision's BasicBlock (expansion 1) or Bottleneck v1.5 (expansion 4)."""

    def __init__(self, cin, width, stride, neck):
        super().__init__()
        cout = width * 4 if neck else width
        conv = lambda i, o, k, s: nn.Conv2d(i, o, k, s, k // 2, bias=False)
        if neck:
            self.body = nn.Sequential(
                conv(cin, width, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
                conv(width, width, 3, stride), nn.BatchNorm2d(width), nn.ReLU(),
                conv(width, cout, 1, 1), nn.BatchNorm2d(cout))
        else:
            self.body = nn.Sequential(
                conv(cin, width, 3, stride), nn.BatchNorm2d(width), nn.ReLU(),
                conv(width, width, 3, 1), nn.BatchNorm2d(width))
        self.down = (nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())
        self.cout = cout

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def resnet(arch, classes):
    """The same structure as linesweep's `worker/src/model/resnet.rs`."""
    depth = int(arch[6:])
    if depth in (20, 32, 44, 56):
        n = (depth - 2) // 6
        stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        stages, neck, c = [(16, n, 1), (32, n, 2), (64, n, 2)], False, 16
    else:
        blocks, neck = {18: ([2, 2, 2, 2], False), 50: ([3, 4, 6, 3], True)}[depth]
        stem = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        stages, c = list(zip([64, 128, 256, 512], blocks, [1, 2, 2, 2])), 64
    layers = list(stem)
    for width, count, stride in stages:
        for i in range(count):
            b = Block(c, width, stride if i == 0 else 1, neck)
            layers.append(b)
            c = b.cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(1)
    net = resnet(a.arch, a.classes)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.arange(a.batch) % a.classes
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    net.train()
    step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    train_s = time.perf_counter() - t
    net.eval()
    with torch.no_grad():
        loss_fn(net(x), y).item()
        t = time.perf_counter()
        for _ in range(a.steps):
            loss_fn(net(x), y).item()
        eval_s = time.perf_counter() - t
    images = a.steps * a.batch
    print(json.dumps({
        "impl": "pytorch " + torch.__version__, "threads": torch.get_num_threads(), "arch": a.arch,
        "batch": a.batch, "size": a.size, "steps": a.steps,
        "train_images_per_s": images / train_s, "eval_images_per_s": images / eval_s,
    }))


if __name__ == "__main__":
    main()
