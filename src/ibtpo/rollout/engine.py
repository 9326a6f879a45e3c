"""The old import path of the built-in engine, kept so that code written against it still runs.

New code imports from `ibtpo.rollout.engines`: the contract (`engines.contract`), the torch
backend (`engines.torch.TorchEngine`, once `Engine` here), its KV cache (`engines.kv_cache`) and
its sampling maths (`engines.sampling`). Wrapping `prefill` or `extend` for a measurement must
patch `engines.kv_cache`, where the backend and the row pool look them up.
"""

from ibtpo.rollout.engines.contract import (  # noqa: F401
    Sample,
    SamplingParams,
    check_keys,
    check_requests,
    check_stop_ids,
)
from ibtpo.rollout.engines.kv_cache import (  # noqa: F401
    DecodeState,
    PreallocLayer,
    decode_attention,
    extend,
    left_pad,
    make_cache,
    position_ids,
    prefill,
    unique_prefixes,
)
from ibtpo.rollout.engines.sampling import draw, next_tokens, token_stats, truncate  # noqa: F401
from ibtpo.rollout.engines.torch import TorchEngine as Engine  # noqa: F401
