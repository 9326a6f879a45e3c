"""A random tiny Llama for the engine, rollout, scheduler and prefix-cache tests (built in code).

Vocabulary of 40 ids: 0 pad, 1 BOS, 2 EOS (one id of 40, so responses stop at very different
lengths). 2 layers, hidden size 32, 4 query and 2 key/value heads of 8 dimensions: a cached
position costs 2 layers x (keys, values) x 2 heads x 8 x 4 bytes = 256 bytes.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB, PAD, BOS, EOS = 40, 0, 1, 2


def random_llama(seed: int = 0) -> LlamaForCausalLM:
    """The tiny Llama with weights drawn after `torch.manual_seed(seed)`, in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    return LlamaForCausalLM(cfg).eval()
