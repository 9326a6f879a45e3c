"""Independent random streams: one seed per purpose, derived from a config seed and a stream name.

Every random choice of a run draws from its own stream, so changing how much one part draws (an
IB tree breaks more ties than GRPO, a larger held-out set draws more problems) never shifts another
part. With the same `train.seed`, GRPO and IB-TPO therefore see the same training prompts in the
same order, and the held-out set depends on `task.seed` alone, whatever the training seed.

    seed of stream = first 8 bytes of blake2b(f"{seed}/{name}") (63 bits)

Streams used by the package (names are part of the reproducibility contract):
"""

from __future__ import annotations

import hashlib
import random

HELD_OUT = "task/held-out"        # which problems are held out (task.seed)
TRAIN_PROBLEMS = "train/problems"  # the training prompts of each RL step (train.seed)
SAMPLING = "train/sampling"        # rollout trees, keyed by (step, prompt): tokens, tie-breaking
EVAL_SAMPLING = "eval/sampling"    # the avg@k samples of evaluations (eval.seed)
SFT_PROBLEMS = "sft/problems"      # the warm-up's batches (sft.seed)
SFT_INIT = "sft/init"              # the warm-up model's initial weights (sft.seed)
SFT_VALIDATION = "sft/validation"  # the warm-up's validation problems (sft.seed)
STREAMS = (HELD_OUT, TRAIN_PROBLEMS, SAMPLING, EVAL_SAMPLING, SFT_PROBLEMS, SFT_INIT,
           SFT_VALIDATION)
__doc__ += "".join(f"\n- `{s}`" for s in STREAMS) + "\n"


def stream_key(*parts) -> int:
    """A 63-bit key, a pure function of `parts` (ints and strings, joined with "/"): the seed of
    a stream, or the key of one row's sampling stream (`ibtpo.rollout.streams`)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for `stream`, a pure function of (seed, stream)."""
    return stream_key(int(seed), stream)


def stream_rng(seed: int, stream: str) -> random.Random:
    """A `random.Random` for `stream`."""
    return random.Random(stream_seed(seed, stream))


def stream_generator(seed: int, stream: str, device="cpu"):
    """A `torch.Generator` on `device` for `stream`."""
    import torch

    return torch.Generator(device).manual_seed(stream_seed(seed, stream))
