"""The kv layout's prompt gather (modeling/kvcache.py): its forward an index_select, its backward index_add_'s sums
to the last bit, by hand and on random gradients shaped like a layer's cached keys."""

import torch

from rankrm.modeling.kvcache import GroupRows, row_adds


def gather_grad(x: torch.Tensor, index: torch.Tensor, grad: torch.Tensor, ours: bool) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    y = GroupRows.apply(x, index, row_adds(index, x.shape[0])) if ours else x.index_select(0, index)
    y.backward(grad)
    return x.grad


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def test_row_adds_and_the_gradient_by_hand():
    """index [0, 0, 2, 0]: row 0 three times (positions 0, 1, 3), row 1 never, row 2 once (position 2). The adds:
    first occurrences (rows 0, 2 at positions 0, 2), second (row 0 at 1), third (row 0 at 3). Gradients 1, 10, 100,
    1000 come back as 1 + 10 + 1000 = 1011 for row 0, 0 for row 1, 100 for row 2."""
    index = torch.tensor([0, 0, 2, 0])
    adds = [(d.tolist(), s.tolist()) for d, s in row_adds(index, 3)]
    assert adds == [([0, 2], [0, 2]), ([0], [1]), ([0], [3])]
    x = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    y = GroupRows.apply(x, index, row_adds(index, 3))
    assert y.tolist() == [[1.0], [1.0], [3.0], [1.0]]
    y.backward(torch.tensor([[1.0], [10.0], [100.0], [1000.0]]))
    assert x.grad.tolist() == [[1011.0], [0.0], [100.0]]


def test_the_gradient_has_index_select_s_bits():
    """Groups of 9, 2 and 5 completions (sorted, as collate makes group_index) and a shuffled index; the gradient a
    slice of a wider tensor, as the cache's keys' is (cat's backward): the bits index_select's backward gives."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 7, 4)
    for index in (torch.tensor([0] * 9 + [1] * 2 + [2] * 5), torch.randperm(16) % 3):
        grad = torch.randn(16, 2, 10, 4)[:, :, :7]  # non-contiguous
        assert same_bits(gather_grad(x, index, grad, True), gather_grad(x, index, grad, False))
        assert same_bits(GroupRows.apply(x, index, row_adds(index, 3)), x.index_select(0, index))
