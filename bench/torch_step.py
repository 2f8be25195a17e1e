"""PyTorch reference (benchmark only): the paper's networks and their SGD step, as a worker.

Runs under a Python that has ``torch`` (never a dependency of nlnoise). ``--model layers18pct``
builds the same network as ``nlnoise.models.get_model("layers18pct", K)`` -- conv 5x5/32 pad 2,
max pool 3/2 (clipped windows = ``ceil_mode``), ReLU, spatial rnorm (size 3, scale 5e-5, pow
0.75, zero padding, centre included), conv 5x5/32, ReLU, avg pool 3/2 (divisor = in-image
pixels), rnorm, conv 5x5/64, ReLU, avg pool, fc -- on 32x32x3 images, and one step: softmax
cross entropy (mean), backward, ``torch.optim.SGD`` with momentum 0.9 and weight decay 0.004 on
the kernels, as ``nlnoise.optim.net_optimizer``. ``--model alexnet`` builds nlnoise's
single-tower AlexNet (``nlnoise.models.alexnet``: cross-map LRN with the paper's constants
after the ReLU, overlapping max pooling, dropout 0.5 before fc7 and fc8) on 227x227x3 images,
with the ImageNet config's SGD (lr 0.01, momentum 0.9, weight decay 5e-4 on the kernels).
``--device cuda`` runs on the GPU (cuDNN autotuning on, as XLA autotunes its kernels).

Worker protocol (``bench/benchlib.py``): prints one JSON line when warmed up, then for every
``run N`` line on stdin runs N steps and prints ``{"seconds": ...}``; ``quit`` ends it.

    /tmp/torchvenv/bin/python bench/torch_step.py --batch 128 [--channels-last]
    python bench/torch_step.py --model alexnet --num-classes 1000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _layers18pct(num_classes: int):
    import torch.nn.functional as F
    from torch import nn

    def rnorm(x):
        s = F.avg_pool2d(x * x, 3, stride=1, padding=1, count_include_pad=True) * 9.0
        return x * (1.0 + 5e-5 / 9.0 * s).pow(-0.75)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
            self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
            self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
            self.fc10 = nn.Linear(1024, num_classes)

        def forward(self, x):
            x = rnorm(F.relu(F.max_pool2d(self.conv1(x), 3, 2, ceil_mode=True)))
            x = rnorm(F.avg_pool2d(F.relu(self.conv2(x)), 3, 2, ceil_mode=True))
            x = F.avg_pool2d(F.relu(self.conv3(x)), 3, 2, ceil_mode=True)
            return self.fc10(x.flatten(1))

    return Net(), 32, 0.004, 1e-3


def _alexnet(num_classes: int):
    from torch import nn

    # torch's LocalResponseNorm divides alpha by the size; the paper's 1e-4 multiplies the sum.
    def lrn():
        return nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)

    net = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 256, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes))
    return net, 227, 5e-4, 0.01


def build(batch: int, num_classes: int, channels_last: bool, threads: int, seed: int = 0,
          model: str = "layers18pct", device: str = "cpu"):
    """The network, the data and a ``step()`` closure."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    net, size, weight_decay, lr = (_alexnet if model == "alexnet" else _layers18pct)(num_classes)
    net = net.to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    kernels = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": kernels, "weight_decay": weight_decay},
                           {"params": biases, "weight_decay": 0.0}], lr=lr, momentum=0.9)
    net.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach().item()  # a sync point, as block_until_ready on the JAX side

    return step, torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model", choices=("layers18pct", "alexnet"), default="layers18pct")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    step, torch = build(args.batch, args.num_classes, args.channels_last, args.threads,
                        model=args.model, device=args.device)
    for _ in range(args.warmup):
        step()
    info = {"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "channels_last": args.channels_last, "model": args.model, "device": args.device}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        n = int(cmd[1])
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    main()
