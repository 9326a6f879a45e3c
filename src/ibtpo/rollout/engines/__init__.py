"""Generation engines: the contract every backend meets (`contract`) and one module per backend
(`torch`, the built-in default). The sampler, the schedulers' callers and the evaluation see only
the contract."""
