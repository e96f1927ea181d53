"""modeling/segments.py: a packed group's attention segments as flat indices and offsets, worked by hand."""

import torch

from rankrm.modeling.segments import segments


def test_a_packed_groups_prompt_and_completions_as_segments():
    """One row: a 3-token prompt at 0-2, completion A at 3-4, completion B at 5. The prompt sees itself; A sees
    [prompt; A] (5 keys), B [prompt; B] (4). Pairs, bottom-right causal: 3 x 3 - 3 = 6, 2 x 5 - 1 = 9, 1 x 4 = 4:
    19, the packed layout's allowed pairs of the same group (planning.allowed_pairs)."""
    s = segments([(0, 3), (3, 2), (5, 1)], [((0, 3),), ((0, 3), (3, 2)), ((0, 3), (5, 1))])
    assert s.q_index.tolist() == [0, 1, 2, 3, 4, 5]
    assert s.k_index.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 5]
    assert s.cu_q.tolist() == [0, 3, 5, 6] and s.cu_k.tolist() == [0, 3, 8, 12] and s.cu_q.dtype == torch.int32
    assert (s.max_q, s.max_k, s.pairs) == (3, 5, 19)


def test_padded_rows_are_one_segment_each_and_padding_is_no_query():
    """Rows of T = 4: row 0 holds 4 real tokens, row 1 two (then padding at flat 6, 7): 10 + 3 pairs."""
    s = segments([(0, 4), (4, 2)], [((0, 4),), ((4, 2),)])
    assert s.q_index.tolist() == [0, 1, 2, 3, 4, 5] and s.k_index.tolist() == [0, 1, 2, 3, 4, 5]
    assert s.cu_q.tolist() == [0, 4, 6] and s.pairs == 4 * 4 - 6 + 2 * 2 - 1
    moved = s.to("cpu")
    assert moved.cu_k.tolist() == [0, 4, 6] and moved.max_q == 4
