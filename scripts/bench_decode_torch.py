"""torchvision's standard ImageNet training transform on a folder of JPEGs, in images/s: the
baseline for `linesweep bench decode --dir DIR` on the same files.

PIL decode + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize, as
torchvision's reference training script and every DataLoader-based ImageNet recipe does it,
on `--threads` worker processes (DataLoader's workers are processes), one intra-op thread each.

Not part of the tests or CI. Run with a PyTorch install, e.g.
    linesweep bench decode --dir /tmp/jpegs --threads 1      # writes the JPEGs once
    python scripts/bench_decode_torch.py --dir /tmp/jpegs --threads 1
One JSON line per run, with the same keys as `linesweep bench decode`.
"""
import argparse
import json
import multiprocessing
import os
import time

import torch
from PIL import Image
from torchvision import transforms

TRANSFORM = transforms.Compose(
    [
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def files(root):
    out = []
    for d in sorted(os.listdir(os.path.join(root, "train"))):
        for f in sorted(os.listdir(os.path.join(root, "train", d))):
            out.append(os.path.join(root, "train", d, f))
    return out


def load(path):
    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    return TRANSFORM(img)


def init():
    torch.set_num_threads(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    paths = files(args.dir)
    init()
    if args.threads == 1:
        load(paths[0])
        t = time.perf_counter()
        n = sum(1 for x in map(load, paths) if x.shape[1] == args.size)
        s = time.perf_counter() - t
    else:
        with multiprocessing.Pool(args.threads, initializer=init) as pool:
            pool.map(load, paths[: args.threads])
            t = time.perf_counter()
            n = sum(1 for x in pool.imap(load, paths, chunksize=8) if x.shape[1] == args.size)
            s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "impl": "torchvision",
                "what": "PIL decode + RandomResizedCrop + flip + ToTensor + Normalize",
                "images": n,
                "threads": args.threads,
                "size": args.size,
                "images_per_s": n / s,
                "torch": torch.__version__,
                "pillow": Image.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
