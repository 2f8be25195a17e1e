"""PyTorch reference (benchmark only): the paper's CIFAR network and its SGD step, as a worker.

Runs under a Python that has ``torch`` (never a dependency of nlnoise). It builds the same
network as ``nlnoise.models.get_model("layers18pct", K)`` -- conv 5x5/32 pad 2, max pool 3/2
(clipped windows = ``ceil_mode``), ReLU, spatial rnorm (size 3, scale 5e-5, pow 0.75, zero
padding, centre included), conv 5x5/32, ReLU, avg pool 3/2 (divisor = in-image pixels),
rnorm, conv 5x5/64, ReLU, avg pool, fc -- and one step: softmax cross entropy (mean), backward,
``torch.optim.SGD`` with momentum 0.9 and weight decay 0.004 on the kernels, as
``nlnoise.optim.net_optimizer``.

Worker protocol (``bench/benchlib.py``): prints one JSON line when warmed up, then for every
``run N`` line on stdin runs N steps and prints ``{"seconds": ...}``; ``quit`` ends it.

    /tmp/torchvenv/bin/python bench/torch_step.py --batch 128 [--channels-last]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def build(batch: int, num_classes: int, channels_last: bool, threads: int, seed: int = 0):
    """The network, the data and a ``step()`` closure."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(threads)

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

    net = Net()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, num_classes, (batch,))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    kernels = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": kernels, "weight_decay": 0.004},
                           {"params": biases, "weight_decay": 0.0}], lr=1e-3, momentum=0.9)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return float(loss)  # a sync point, as block_until_ready on the JAX side

    return step, torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    step, torch = build(args.batch, args.num_classes, args.channels_last, args.threads)
    for _ in range(args.warmup):
        step()
    info = {"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "channels_last": args.channels_last}
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
