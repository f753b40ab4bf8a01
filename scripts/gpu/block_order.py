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

Then the fused dq (MIXSIM_ATTENTION_FUSED_DQ): the backward's two kernels (dq, then dkdv) against
one key-major kernel whose block b, at each step of its walk over the query tiles (from the last
down), computes a tile (`fused` of a dkdv tile's work), waits until block b - 1 has added its
part of the same query tile, and adds its own (`delta`, a latency: the block holds its slot and
uses none of the SM's rate, as a waiting block does). In both launch orders; the waits are what
the per-head order may pay for. Work in dkdv tiles: a dq tile costs `dq` of one (run 10: the dq
kernel 1.77 ms, dkdv 1.69, the same tiles); `fused` and `delta` are guesses, so several are
tried.

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


def fused_makespan(order, blocks, sms, slots, rates, fused, delta):
    """Event simulation of the fused key-major kernel: `order` lists (head, key block) in launch
    order; key block b has blocks - b steps; step t of block b ends `delta` after both its own
    tile (`fused` work) and block b - 1's step t have ended."""
    queue = list(reversed(order))
    done = {}  # (head, b, t) -> the time step t of block (head, b) ended
    state = {}  # (head, b) -> [sm, step, phase, left]: phase "work" (left: work), "wait" or "add"
    per_sm = [0] * sms
    t = 0.0

    def start(sm):
        head, b = queue.pop()
        state[(head, b)] = [sm, 0, "work", fused]
        per_sm[sm] += 1

    for sm in range(sms):
        while per_sm[sm] < slots and queue:
            start(sm)
    while state:
        # blocks waiting on a step that has ended now add their part
        for (head, b), st in state.items():
            if st[2] == "wait" and (head, b - 1, st[1]) in done:
                st[2], st[3] = "add", delta
        working = [0] * sms
        for st in state.values():
            working[st[0]] += st[2] == "work"
        def speed(sm):
            n = working[sm]
            return rates[n] / n
        dt = min(st[3] / speed(st[0]) if st[2] == "work" else st[3]
                 for st in state.values() if st[2] != "wait")
        t += dt
        finished = []
        for key, st in state.items():
            if st[2] == "wait":
                continue
            st[3] -= dt * speed(st[0]) if st[2] == "work" else dt
            if st[3] > 1e-9:
                continue
            head, b = key
            if st[2] == "work":
                if b == 0 or (head, b - 1, st[1]) in done:
                    st[2], st[3] = "add", delta
                else:
                    st[2] = "wait"
            else:  # the part added: the step has ended
                done[(head, b, st[1])] = t
                st[1] += 1
                if st[1] == blocks - b:
                    finished.append(key)
                else:
                    st[2], st[3] = "work", fused
        for key in finished:
            sm = state.pop(key)[0]
            per_sm[sm] -= 1
            while per_sm[sm] < slots and queue:
                start(sm)
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
    fused_dq(sms, models)


def fused_dq(sms, models):
    """The backward's time in dkdv tiles of work at full rate: the dq kernel (four blocks an SM)
    and then dkdv (three), against the fused kernel (three), in both launch orders."""
    print("fused dq: the backward (dq kernel, then dkdv) against one fused kernel, "
          "over the ideal of the two kernels")
    dq = 1.77 / 1.69  # a dq tile's work in dkdv tiles (run 10)
    cases = [("GPT-2 (B 8, 12 heads, T 1024)", 12, 8, 16), ("1.1B (B 2, 16 heads, T 2048)", 16, 2, 32)]
    for name, nh, batch, blocks in cases:
        heads = nh * batch
        per_head = [(h, b) for h in range(heads) for b in range(blocks)]
        heavy = [(h, b) for b in range(blocks) for h in range(heads)]
        works = [blocks - b for b in range(blocks)]
        ideal = heads * sum(works) * (1 + dq) / sms
        print(name)
        for model, rates in models.items():
            r4 = [x / rates[4] for x in rates[:5]]
            r3 = [x / rates[3] for x in rates[:4]]
            two = (makespan([w * dq for _ in range(heads) for w in works], sms, 4, r4) +
                   makespan([w for _ in range(heads) for w in works], sms, 3, r3)) / ideal
            print(f"  {model:28s} two kernels {two:.3f}")
            for fused in (1.25, 1.4):
                for delta in (0.1, 0.3):
                    a = fused_makespan(per_head, blocks, sms, 3, r3, fused, delta) / ideal
                    b = fused_makespan(heavy, blocks, sms, 3, r3, fused, delta) / ideal
                    print(f"    fused: a tile {fused}, an add {delta}   per head {a:.3f} "
                          f"({a / two:.2f} of two)   heavy-first {b:.3f} ({b / two:.2f} of two)")


if __name__ == "__main__":
    main()
