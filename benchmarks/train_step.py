"""A CPU training step with the chunked head loss vs full logits + cross_entropy, in one run.

speed-up = time(step with full logits) / time(step with HeadCrossEntropy)   goal >= 1.1
Steps alternate between the two losses (median of repeats), on one thread as a
workflow job runs; the default shape is the default config's corpus LM.
"""

import argparse
import statistics
import time
from unittest import mock

import torch

from knnlm_limits import model, train


def full_logits_loss(lm, ids, scored):
    """lm_loss's own path for models outside the known families: full logits + cross_entropy."""
    with mock.patch.object(train, "head_split", lambda model: None):
        return train.lm_loss(lm, ids, scored)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--chunks", type=int, nargs="*", default=[2**19, 2**21, 2**23, 2**25],
                    help="logit elements per chunk to compare (HEAD_CHUNK_CPU is the default)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = model.build_model(args.vocab, args.layers, args.width, 4, args.block)
    lm.train()
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    ids = torch.randint(0, args.vocab, (args.batch, args.block), generator=torch.Generator().manual_seed(0))
    scored = torch.ones(args.batch, args.block - 1, dtype=torch.bool)

    def step(loss_fn):
        t0 = time.perf_counter()
        loss = loss_fn(lm, ids, scored)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    def chunked(elements):
        def loss_fn(lm, ids, scored):
            train.HEAD_CHUNK_CPU = elements
            return train.lm_loss(lm, ids, scored)
        return loss_fn

    default = train.HEAD_CHUNK_CPU
    variants = {"full logits": full_logits_loss, **{f"chunk {c:>9,}": chunked(c) for c in sorted({*args.chunks, default})}}
    times = {name: [] for name in variants}
    for name, fn in variants.items():  # warm-up
        step(fn)
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(step(fn))
    base = statistics.median(times["full logits"])
    print(f"{args.batch}x{args.block} tokens, vocabulary {args.vocab}, {args.layers}x{args.width}, 1 thread")
    for name, values in times.items():
        median = statistics.median(values)
        mark = "  <- HEAD_CHUNK_CPU" if name == f"chunk {default:>9,}" else ""
        print(f"{name:18s} {median:6.3f} s/step  speed-up {base / median:4.2f}x{mark}")


if __name__ == "__main__":
    main()
