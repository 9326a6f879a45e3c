"""The IB-TPO core: pure functions of trees and tensors (ALGORITHM.md §1-5).

`tree`, `ib_score`, `branching` and `advantages` need only numpy: they import without torch, so
other trainers can call them. `losses` works on torch tensors and imports torch itself.
"""
