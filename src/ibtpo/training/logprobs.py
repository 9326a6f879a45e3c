"""Per-token log-probs and entropies of whole sequences under the training forward.

Shape letters: N sequences, T tokens, V vocabulary size. Position t scores token t (predicted from
the logits at t - 1); position 0 holds 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logprobs(model, input_ids, attention_mask, temperature: float = 1.0):
    """Log-prob and entropy of every token under softmax(logits / T); position t scores token t.

    Returns ``(logprobs, entropy)``, both ``(N, T)`` float32, 0 at position 0.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (N, T)
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids).logits[:, :-1].float() / temperature  # (N, T-1, V)
    logp = torch.log_softmax(logits, dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (N, T-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (N, T-1)
    return F.pad(token_logp, (1, 0)), F.pad(entropy, (1, 0))
