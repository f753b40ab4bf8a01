"""Makespan of the causal attention kernels' blocks in two launch orders, simulated.

The tensor-core attention kernels (kernels/attention_tc.cu) give each (batch, head) one block per
64 rows; under the causal mask row block i of T / 64 has i + 1 tiles of work (the forward and dq
kernels), and dkdv's key block j has T / 64 - j. Blocks start in launch order whenever an SM has
room. This compares
  per head:  the default grid (row blocks, NH, B): each head's blocks longest first, one head
             after another;
  heavy-first: MIXSIM_ATTENTION_HEAVY_FIRST's grid (NH, B, row blocks): every head's longest
             block before any shorter one,
on a model of the GPU: `sms` SMs of `slots` resident blocks each, an SM's rate shared evenly
among its blocks and lower with fewer of them (`rates`, the share of its full rate with 1, 2, ...
blocks resident; guesses, so several are tried). Prints each order's makespan over the ideal
(all work spread evenly at full rate). A model, not a measurement: the GPU run measures.

    python3 scripts/gpu/block_order.py
"""
import math


def makespan(works, sms, slots, rates):
    """Event simulation: blocks start in the order of `works` (each block's work in tiles)."""
    queue = list(reversed(works))
    resident = [[] for _ in range(sms)]
    for blocks in resident:
        while len(blocks) < slots and queue:
            blocks.append(queue.pop())
    t = 0.0
    while any(resident):
        # each block of an SM with n resident runs at rates[n] / n of a full SM
        dt = min(min(b) * n / rates[n] for b in resident if (n := len(b)))
        t += dt
        for i, blocks in enumerate(resident):
            if not blocks:
                continue
            speed = rates[len(blocks)] / len(blocks)
            left = [w - speed * dt for w in blocks]
            resident[i] = [w for w in left if w > 1e-9]
            while len(resident[i]) < slots and queue:
                resident[i].append(queue.pop())
    return t


def orders(heads, blocks):
    """(per head, heavy-first) lists of the blocks' tiles for one kernel launch."""
    longest_first = [blocks - k for k in range(blocks)]
    per_head = [w for _ in range(heads) for w in longest_first]
    heavy_first = [w for w in longest_first for _ in range(heads)]
    return per_head, heavy_first


def main():
    sms = 132  # an H100 SXM's or an H200's
    cases = [  # (name, heads = B * NH, row blocks = T / 64, resident blocks an SM)
        ("GPT-2 forward and dq (B 8, 12 heads, T 1024)", 96, 16, 4),
        ("GPT-2 dkdv", 96, 16, 3),
        ("1.1B (B 2, 16 heads, T 2048), 3 blocks an SM", 32, 32, 3),
    ]
    models = {  # the share of an SM's full rate with 1, 2, ... blocks resident
        "shared, fewer blocks slower": [0, 0.45, 0.75, 0.92, 1.0],
        "linear in the blocks": [0, 0.25, 0.5, 0.75, 1.0],
        "one block fills the SM": [0, 1.0, 1.0, 1.0, 1.0],
    }
    for name, heads, blocks, slots in cases:
        per_head, heavy = orders(heads, blocks)
        ideal = sum(per_head) / sms
        print(name)
        for model, rates in models.items():
            r = [x / rates[slots] for x in rates[:slots + 1]]  # full rate with `slots` resident
            a = makespan(per_head, sms, slots, r) / ideal
            b = makespan(heavy, sms, slots, r) / ideal
            print(f"  {model:28s} per head {a:.3f}   heavy-first {b:.3f}   ({a / b:.2f}x)")


if __name__ == "__main__":
    main()
