"""Integrations with other frameworks (``integrations/trl.py``: IB-Score diagnostics of a TRL
GRPO run). Nothing in the core imports this package; each module imports its framework itself."""
