"""Tests for cyborgs.modeling.mask_pooling against plain-loop references."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from cyborgs.modeling.mask_pooling import masks_to_grid, pool_by_mask, sample_mask_ids


def _reference_grid(masks: torch.Tensor, h: int, w: int, num_ids: int) -> torch.Tensor:
    """METHOD.md §2.3's definition verbatim: one-hot, adaptive average pool, argmax."""
    one_hot = F.one_hot(masks, num_ids).permute(0, 3, 1, 2).double()
    return F.adaptive_avg_pool2d(one_hot, (h, w)).argmax(dim=1)


def _loop_grid(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Count votes per tile with Python loops (grid divides the image); ties -> smallest id."""
    B, H, W = masks.shape
    sy, sx = H // h, W // w
    out = torch.zeros(B, h, w, dtype=torch.long)
    for b in range(B):
        for i in range(h):
            for j in range(w):
                votes = Counter(
                    masks[b, i * sy : (i + 1) * sy, j * sx : (j + 1) * sx].flatten().tolist()
                )
                top = max(votes.values())
                out[b, i, j] = min(k for k, v in votes.items() if v == top)
    return out


def test_hand_computed_grid():
    # 4x4 mask onto 2x2: top-left tile {1,1,1,2} -> 1; top-right {2,2,3,3} tie -> 2;
    # bottom-left all 0 -> 0; bottom-right {5,5,5,0} -> 5.
    m = torch.tensor([[1, 1, 2, 2], [1, 2, 3, 3], [0, 0, 5, 5], [0, 0, 5, 0]])[None]
    assert masks_to_grid(m, (2, 2), 6).tolist() == [[[1, 2], [0, 5]]]


@pytest.mark.parametrize("shape,grid", [((3, 12, 18), (4, 6)), ((2, 14, 14), (7, 7))])
def test_divisible_grid_matches_loops_and_one_hot(shape, grid):
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 5, shape, generator=g)
    out = masks_to_grid(masks, grid, 5)
    assert out.dtype == torch.long and out.shape == (shape[0], *grid)
    assert torch.equal(out, _loop_grid(masks, *grid))
    assert torch.equal(out, _reference_grid(masks, *grid, 5))


def test_non_divisible_grid_matches_one_hot_reference(monkeypatch):
    g = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 7, (2, 13, 10), generator=g)
    expected = _reference_grid(masks, 4, 3, 7)
    assert torch.equal(masks_to_grid(masks, (4, 3), 7), expected)
    # Force tiny id chunks so the running argmax across chunks is exercised.
    import cyborgs.modeling.mask_pooling as mp

    monkeypatch.setattr(mp, "_ONE_HOT_CHUNK_ELEMENTS", 2 * 13 * 10 * 2)
    assert torch.equal(masks_to_grid(masks, (4, 3), 7), expected)


def test_large_ids_are_kept_not_dropped():
    # Ids above the authors' 81 must survive (METHOD.md §2).
    masks = torch.full((1, 8, 8), 200)
    masks[:, :4, :4] = 255
    out = masks_to_grid(masks, (2, 2), 257)
    assert out.tolist() == [[[255, 200], [200, 200]]]


def test_out_of_range_ids_raise():
    with pytest.raises(ValueError, match=r"must lie in \[0, 81\) but found values in \[81, 81\]"):
        masks_to_grid(torch.full((1, 4, 4), 81), (2, 2), 81)
    with pytest.raises(ValueError, match=r"must lie in \[0, 81\) but found values in \[-1, -1\]"):
        masks_to_grid(torch.full((1, 4, 4), -1), (2, 2), 81)


def test_sample_ids_only_present_and_roughly_uniform():
    grid = torch.zeros(2, 4, 4, dtype=torch.long)
    grid[0, :, :2] = 3  # image 0: ids {0, 3}, id 0 covers half, 3 covers half
    grid[0, 0, 0] = 7  # a single-cell id: uniform over ids, not over cells
    grid[1] = 5  # image 1: only id 5
    g = torch.Generator().manual_seed(0)
    ids = sample_mask_ids(grid, 3000, generator=g)
    assert ids.shape == (2, 3000) and ids.dtype == torch.long
    assert set(ids[0].tolist()) == {0, 3, 7}
    assert set(ids[1].tolist()) == {5}
    freq = torch.bincount(ids[0], minlength=8).float() / 3000
    for k in (0, 3, 7):
        assert abs(freq[k].item() - 1 / 3) < 0.05


def test_sample_ids_reproducible_with_generator():
    grid = torch.randint(0, 9, (4, 7, 7), generator=torch.Generator().manual_seed(3))
    a = sample_mask_ids(grid, 16, generator=torch.Generator().manual_seed(11))
    b = sample_mask_ids(grid, 16, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)


def test_pool_by_mask_matches_loops():
    g = torch.Generator().manual_seed(0)
    B, C, h, w, S = 3, 5, 4, 3, 6
    feats = torch.randn(B, C, h, w, generator=g)
    grid = torch.randint(0, 4, (B, h, w), generator=g)
    ids = torch.randint(0, 5, (B, S), generator=g)  # id 4 never occurs -> zero vector
    out = pool_by_mask(feats, grid, ids)
    assert out.shape == (B, S, C)
    for b in range(B):
        for s in range(S):
            cells = [
                feats[b, :, i, j] for i in range(h) for j in range(w) if grid[b, i, j] == ids[b, s]
            ]
            expected = torch.stack(cells).mean(0) if cells else torch.zeros(C)
            torch.testing.assert_close(out[b, s], expected)


def test_pool_by_mask_gradient_and_shape_checks():
    feats = torch.randn(1, 2, 2, 2, requires_grad=True)
    grid = torch.tensor([[[0, 0], [0, 1]]])
    pool_by_mask(feats, grid, torch.tensor([[0]])).sum().backward()
    # Each of the three id-0 cells gets 1/3 of the gradient, the id-1 cell none.
    torch.testing.assert_close(feats.grad[0, 0], torch.tensor([[1 / 3, 1 / 3], [1 / 3, 0.0]]))
    with pytest.raises(ValueError, match="grid_masks"):
        pool_by_mask(feats, torch.zeros(1, 3, 3, dtype=torch.long), torch.tensor([[0]]))
