"""What a backward pass will run: the autograd graph behind a tensor."""

from __future__ import annotations

import torch


def autograd_ops(output: torch.Tensor) -> set[str]:
    """The names of every node in ``output``'s backward graph."""
    seen, names, stack = set(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names
