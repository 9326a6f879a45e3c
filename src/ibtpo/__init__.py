"""ibtpo: IB-TPO (Information-Bottleneck-driven Tree-based Policy Optimization) for LLM reasoning.

`ibtpo.make_trainer(model=..., dataset=..., reward_funcs=...)` is the Python API (ibtpo.api); it
is imported on first use, so that `import ibtpo.core` stays free of torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("make_trainer", "Trainer"):
        from ibtpo import api

        return getattr(api, name)
    raise AttributeError(f"module 'ibtpo' has no attribute {name!r}")
