"""ibtpo: Information-Bottleneck-driven Tree-based Policy Optimization (Jiang et al., ICML 2026)."""

__version__ = "0.1.0"
