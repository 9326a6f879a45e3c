"""Rollout trees: nodes are steps, leaves are trajectories (ALGORITHM.md §1).

One tree per prompt. The root holds the prompt; every other node holds one *step*: a span of
generated token ids with the sampling (old) policy's log-probs and token entropies. A terminal node
ends its response (EOS or length limit), carries the trajectory's reward and never gets children.
Shape letters (used by the modules built on this one): P prompts, G trajectories per prompt
(= leaves of a tree), N sequences, T tokens.

Choices (config key in brackets):
- Steps end after every occurrence of the delimiter [`step_delimiter`, default "\\n\\n"], cut on
  decoded text: the step ends at the first token whose decoded text completes an occurrence
  (occurrences are found left to right, non-overlapping, as `str.count` does). A token that holds
  text past the delimiter (".\\n\\nThe") ends the step with all its text. The last step ends at the
  end of the response. A last span that decodes to no text (e.g. only the EOS token of a response
  ending in "\\n\\n<eos>") is folded into the step before it: a step holds text. See `split_steps`
  for how decoding is kept cheap.
- Identical sibling steps [`merge_identical_steps`, default off]: a new non-terminal step equal
  (same token ids) to an existing non-terminal child of the same parent is not added; that child's
  `count` is incremented and the chain continues under it. Terminal steps are never merged, so
  every trajectory keeps its own leaf and reward. Merged steps were still generated, so
  `Tree.num_generated_tokens` counts them every time.
- Rewards: `None` (unscorable) counts as 0.0 in `p_hat`; the rollout counts them. Rewards outside
  [0, 1] or NaN raise ValueError.
- Step probability `pi_bar` [`prob_norm`]: "mean" (default) exp(mean token log-prob), "sum"
  exp(sum of log-probs), "sibling" the "sum" values of a node's distinct children renormalised to
  sum to 1 over them (a merged child counts once in the normalisation). A step with no tokens (an
  empty response) has pi_bar = 1 under "mean" and "sum" (empty product).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Callable

PROB_NORMS = ("mean", "sum", "sibling")
PROB_SOURCES = ("old", "ref")  # whose log-probs pi_bar is made of: sampling or reference policy
STOP_REASONS = ("eos", "length")


@dataclass(eq=False)
class Node:
    """One step (or the root). Identity-hashable so nodes can be dict keys."""

    token_ids: list[int]
    logprobs: list[float]
    entropies: list[float]
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    terminal: bool = False
    stop_reason: str | None = None
    reward: float | None = None
    count: int = 1
    depth: int = 0
    text: str = ""
    ref_logprobs: list[float] | None = None  # the reference policy's, when the trainer fills them

    def __repr__(self) -> str:
        kind = "leaf" if self.terminal else "node"
        return f"Node({kind}, depth={self.depth}, n_tok={len(self.token_ids)}, text={self.text!r})"


@dataclass(eq=False)
class Tree:
    """A rollout tree for one prompt. Grow it with `add_step` / `attach_response`."""

    prompt_ids: list[int]
    root: Node
    prompt: str = ""
    meta: dict = field(default_factory=dict)
    generated_tokens: int = 0
    branch_points: list[Node] = field(default_factory=list, repr=False)  # node of each branch
    _leaves: list[Node] = field(default_factory=list, repr=False)

    def nodes(self) -> list[Node]:
        """All nodes in pre-order, root first."""
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out

    def leaves(self) -> list[Node]:
        """Terminal nodes, one per trajectory, in creation order (hand-hung ones after,
        pre-order)."""
        known = set(self._leaves)
        extra = [n for n in self.nodes() if n.terminal and n not in known]
        return [n for n in self._leaves if _reachable(self.root, n)] + extra

    def trajectories(self) -> list[list[Node]]:
        """Per leaf (in `leaves()` order): the root-exclusive path [step1, ..., leaf]."""
        return [path_to(leaf) for leaf in self.leaves()]

    def branchable(self) -> list[Node]:
        """Non-terminal nodes, root included, in pre-order."""
        return [n for n in self.nodes() if not n.terminal]

    def prefix_ids(self, node: Node) -> list[int]:
        """prompt_ids + tokens of the path from the root to `node` (inclusive)."""
        return list(self.prompt_ids) + self.response_ids(node)

    def response_ids(self, leaf: Node) -> list[int]:
        """Tokens of the root-exclusive path to `leaf`."""
        return [t for step in path_to(leaf) for t in step.token_ids]

    def response_text(self, leaf: Node) -> str:
        return "".join(step.text for step in path_to(leaf))

    def num_generated_tokens(self) -> int:
        """Tokens actually generated for this tree (merged duplicates counted each time)."""
        return self.generated_tokens


def _reachable(root: Node, node: Node) -> bool:
    while node.parent is not None:
        node = node.parent
    return node is root


def path_to(node: Node) -> list[Node]:
    """Root-exclusive path [step1, ..., node]; [] for the root."""
    path = []
    while node.parent is not None:
        path.append(node)
        node = node.parent
    return path[::-1]


def new_tree(prompt_ids: list[int], prompt: str = "", meta: dict | None = None) -> Tree:
    root = Node(token_ids=[], logprobs=[], entropies=[])
    return Tree(prompt_ids=list(prompt_ids), root=root, prompt=prompt, meta=dict(meta or {}))


# ----------------------------------------------------------------------------- growing a tree


def add_step(tree: Tree, parent: Node, token_ids, logprobs, entropies, *, terminal: bool = False,
             stop_reason: str | None = None, reward: float | None = None, text: str = "") -> Node:
    """Hang one new step under `parent` and count its tokens as generated. Returns the new node."""
    _check_lengths(token_ids, logprobs, entropies)
    if parent.terminal:
        raise ValueError("parent: expected a non-terminal node (terminal nodes never get children)")
    node = Node(list(token_ids), [float(x) for x in logprobs], [float(x) for x in entropies],
                parent=parent, terminal=terminal, stop_reason=stop_reason, reward=reward,
                depth=parent.depth + 1, text=text)
    parent.children.append(node)
    tree.generated_tokens += len(node.token_ids)
    if terminal:
        tree._leaves.append(node)
    return node


def _check_lengths(token_ids, logprobs, entropies) -> None:
    if not len(token_ids) == len(logprobs) == len(entropies):
        raise ValueError(
            f"logprobs/entropies: expected one per token ({len(token_ids)} token_ids), got "
            f"{len(logprobs)} logprobs and {len(entropies)} entropies")


def _merge_target(parent: Node, token_ids: list[int]) -> Node | None:
    for child in parent.children:
        if not child.terminal and child.token_ids == token_ids:
            return child
    return None


def attach_response(tree: Tree, node: Node, token_ids, logprobs, entropies, stop_reason: str,
                    decode: Callable[[list[int]], str], delimiter: str = "\n\n",
                    merge_identical_steps: bool = False) -> Node:
    """Cut a continuation of `node` into steps and hang them as a chain; returns the new leaf.

    An empty continuation still creates a terminal leaf with no tokens.
    """
    _check_lengths(token_ids, logprobs, entropies)
    if stop_reason not in STOP_REASONS:
        raise ValueError(f"stop_reason: expected one of {STOP_REASONS}, got {stop_reason!r}")
    spans = split_steps(token_ids, decode, delimiter) or [(0, 0)]
    parent = node
    for i, (a, b) in enumerate(spans):
        ids, last = list(token_ids[a:b]), i == len(spans) - 1
        same = _merge_target(parent, ids) if merge_identical_steps and not last else None
        if same is not None:
            same.count += 1
            tree.generated_tokens += len(ids)
            parent = same
            continue
        parent = add_step(tree, parent, ids, logprobs[a:b], entropies[a:b], terminal=last,
                          stop_reason=stop_reason if last else None, text=decode(ids))
    return parent


# ----------------------------------------------------------------------------- cutting steps


def split_steps(token_ids, decode: Callable[[list[int]], str],
                delimiter: str = "\n\n") -> list[tuple[int, int]]:
    """(start, end) spans tiling `token_ids` exactly; a step ends at the first token whose decoded
    text completes a delimiter occurrence; a last span with no text joins the one before it.
    [] for no tokens.

    Fast path (char and most byte-level tokenizers): decode each token once; if the pieces join to
    the full decode, delimiter occurrences in the full text are mapped to tokens by character
    offsets (O(n) decodes of one token). Otherwise (e.g. SentencePiece, whose lone-token decode
    drops the leading space) prefix decodes are used, but only at tokens that can complete an
    occurrence:
    those whose own decode contains the delimiter's last character, is empty, or has U+FFFD (a
    partial UTF-8 sequence).
    """
    if not delimiter:
        raise ValueError("delimiter: expected a non-empty string")
    ids = list(token_ids)
    if not ids:
        return []
    pieces = [decode([t]) for t in ids]
    text = "".join(pieces)
    if text == decode(ids):
        ends = _ends_by_offsets(pieces, text, delimiter)
    else:
        ends = _ends_by_prefix_decode(ids, pieces, decode, delimiter)
    spans = _spans_from_ends(ends, len(ids))
    if len(spans) > 1 and decode(ids[spans[-1][0]:]) == "":  # e.g. "...\n\n" + <eos>
        spans[-2:] = [(spans[-2][0], len(ids))]
    return spans


def _occurrence_ends(text: str, delimiter: str) -> list[int]:
    """Index of the last character of each non-overlapping occurrence, left to right."""
    out, i = [], text.find(delimiter)
    while i >= 0:
        out.append(i + len(delimiter) - 1)
        i = text.find(delimiter, i + len(delimiter))
    return out


def _ends_by_offsets(pieces: list[str], text: str, delimiter: str) -> list[int]:
    stops, total = [], 0
    for piece in pieces:  # stops[i] = character offset where token i's text ends
        total += len(piece)
        stops.append(total)
    return [bisect.bisect_right(stops, c) for c in _occurrence_ends(text, delimiter)]


def _ends_by_prefix_decode(ids, pieces, decode, delimiter: str) -> list[int]:
    last_char, ends, seen = delimiter[-1], [], 0
    for i, piece in enumerate(pieces):
        if piece and last_char not in piece and "\ufffd" not in piece:
            continue
        n = decode(ids[: i + 1]).count(delimiter)
        if n > seen:
            ends.append(i)
            seen = n
    return ends


def _spans_from_ends(ends: list[int], n: int) -> list[tuple[int, int]]:
    spans, start = [], 0
    for e in sorted(set(ends)):
        spans.append((start, e + 1))
        start = e + 1
    if start < n:
        spans.append((start, n))
    return spans


# ----------------------------------------------------------------------------- values


def leaf_reward(leaf: Node) -> float:
    """A leaf's reward as a float: None -> 0.0; NaN, < 0 or > 1 raise ValueError."""
    r = 0.0 if leaf.reward is None else float(leaf.reward)
    if math.isnan(r) or r < 0.0 or r > 1.0:
        raise ValueError(f"reward: expected a float in [0, 1] or None, got {leaf.reward!r}")
    return r


def p_hat(tree: Tree) -> dict[Node, float]:
    """Mean reward of the trajectories through each node (ALGORITHM §1); leaf = its reward."""
    sums: dict[Node, tuple[float, int]] = {}
    for node in reversed(tree.nodes()):  # children before parents
        if node.terminal:
            sums[node] = (leaf_reward(node), 1)
            continue
        s = sum(sums[c][0] for c in node.children)
        n = sum(sums[c][1] for c in node.children)
        if n == 0:
            where = "tree" if node is tree.root else f"node at depth {node.depth}"
            raise ValueError(f"tree: expected at least one leaf under every node; {where} has none")
        sums[node] = (s, n)
    return {node: s / n for node, (s, n) in sums.items()}


def _step_logprobs(node: Node, source: str) -> list[float]:
    if source == "old":
        return node.logprobs
    if node.ref_logprobs is None or len(node.ref_logprobs) != len(node.token_ids):
        raise ValueError(f"{node!r}: expected reference log-probs, one per token (source='ref')")
    return node.ref_logprobs


def _raw_logprob(node: Node, prob_norm: str, source: str = "old") -> float:
    logprobs = _step_logprobs(node, source)
    total = sum(logprobs)
    if prob_norm == "mean":
        return total / len(logprobs) if logprobs else 0.0
    return total


def pi_bar(tree: Tree, prob_norm: str = "mean", source: str = "old") -> dict[Node, float]:
    """Step probability of every non-root node (ALGORITHM §1), under the sampling policy
    (`source="old"`) or the reference policy (`"ref"`: nodes need `ref_logprobs`)."""
    if prob_norm not in PROB_NORMS:
        raise ValueError(f"prob_norm: expected one of {PROB_NORMS}, got {prob_norm!r}")
    if source not in PROB_SOURCES:
        raise ValueError(f"source: expected one of {PROB_SOURCES}, got {source!r}")
    out = {}
    for node in tree.nodes():
        if not node.children:
            continue
        logs = [_raw_logprob(c, prob_norm, source) for c in node.children]  # sibling: "sum"
        if prob_norm == "sibling":
            m = max(logs)
            z = sum(math.exp(x - m) for x in logs)
            logs = [x - m - math.log(z) for x in logs]
        out.update({c: math.exp(x) for c, x in zip(node.children, logs)})
    return out
