"""Loads linesweep snapshots into the PyTorch modules of docs/results.md with
`load_state_dict(strict=True)` and recomputes the α = 1 test loss of each shard's `init` line
from the last snapshot, on the same CIFAR-10 test file, for comparison with what linesweep
recorded. Not part of the tests or CI (it needs PyTorch and torchvision).

Usage: verify_pytorch.py OUT_DIR SWEEP CIFAR_DIR
"""
import glob
import json
import os
import sys

import duckdb
import numpy as np
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file

out, sweep, cifar = sys.argv[1], sys.argv[2], sys.argv[3]
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


class Cnn(nn.Module):
    def __init__(self, in_ch=1, channels=(32, 64), classes=10, act=nn.ReLU, batch_norm=False):
        super().__init__()
        widths = [in_ch, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels) if batch_norm else nn.ModuleList()
        self.fc, self.act, self.pool = nn.Linear(widths[-1], classes), act(), nn.MaxPool2d(2)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = self.act(x)
            if min(x.shape[-2:]) >= 2:
                x = self.pool(x)
        return self.fc(x.mean((2, 3)))


def cifar_resnet(depth, classes):
    from torchvision.models.resnet import BasicBlock, ResNet
    n = (depth - 2) // 6
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)
    net.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(16)
    net.maxpool = nn.Identity()
    net.inplanes = 16
    net.layer1 = net._make_layer(BasicBlock, 16, n)
    net.layer2 = net._make_layer(BasicBlock, 32, n, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 64, n, stride=2)
    net.layer4 = nn.Identity()
    net.fc = nn.Linear(64, classes)
    return net


raw = np.fromfile(os.path.join(cifar, "test_batch.bin"), dtype=np.uint8).reshape(-1, 3073)
y = torch.tensor(raw[:, 0].astype(np.int64))
x = raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
x = torch.tensor((x - MEAN[None, :, None, None]) / STD[None, :, None, None])

for snapdir in sorted(glob.glob(f"{out}/snapshots/*")):
    shard = os.path.basename(snapdir)
    cfg = json.load(open(f"{snapdir}/config.json"))
    arch = cfg["model"]["arch"]
    if arch == "cnn":
        net = Cnn(3, cfg["model"]["channels"], 10, batch_norm=cfg["model"]["norm"] == "batch")
    elif arch in ("resnet18", "resnet50"):
        net = getattr(torchvision.models, arch)(num_classes=10)
    else:
        net = cifar_resnet(int(arch[6:]), 10)
    last = sorted(glob.glob(f"{snapdir}/step-*.safetensors"))[-1]
    net.load_state_dict(load_file(last), strict=True)
    net.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(net(x), y).item()
    recorded = duckdb.sql(
        f"select loss from read_parquet('{out}/results/interpolation/sweep={sweep}/{shard}.parquet') "
        f"where start = 'init' and alpha = 1 and split = 'test'"
    ).fetchall()[0][0]
    print(json.dumps({"shard": shard, "arch": arch, "snapshot": os.path.basename(last),
                      "strict_load": True, "pytorch_test_loss": loss, "linesweep_test_loss": recorded,
                      "abs_diff": abs(loss - recorded)}))
