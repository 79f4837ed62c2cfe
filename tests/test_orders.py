"""Each order is a valid permutation with its defining property."""
import pytest
import torch

from semaim_core import orders as O

GRID = (6, 8)
N = GRID[0] * GRID[1]


def similarity(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, 1 + N, 32, generator=g)
    return O.similarity_map(tokens)


def ranks(c):
    return c.argsort(dim=1, stable=True)


def is_permutation(c):
    return torch.equal(ranks(c).sort(dim=1).values, torch.arange(c.shape[1]).expand_as(c))


def test_similarity_map_is_a_softmax_of_cosines():
    tokens = torch.randn(2, 1 + N, 16)
    s = O.similarity_map(tokens)
    cos = torch.nn.functional.cosine_similarity(tokens[:, :1], tokens[:, 1:], dim=-1)
    torch.testing.assert_close(s, cos.softmax(-1))


def test_raster_is_index_order():
    c = O.make_order("raster", 3, GRID, "cpu")
    assert torch.equal(ranks(c), torch.arange(N).expand(3, -1))


def test_stochastic_is_a_random_permutation():
    c = O.make_order("stochastic", 3, GRID, "cpu")
    assert is_permutation(c) and not torch.equal(ranks(c)[0], ranks(c)[1])
    assert len(set(c.flatten().tolist())) == c.numel()  # no ties


def test_similarity_order_goes_from_most_to_least_similar():
    s = similarity()
    c = O.make_order("similarity", 4, GRID, "cpu", s)
    along = s.gather(1, ranks(c))
    assert is_permutation(c) and (along[:, 1:] <= along[:, :-1]).all()


@pytest.mark.parametrize("smooth", [False, True])
def test_semantic_starts_at_the_center_and_moves_outward(smooth):
    s = similarity()
    c = O.make_order("semantic", 4, GRID, "cpu", s, lam=1e-3, smooth=smooth)
    assert is_permutation(c)
    center = (O.smooth3x3(s, GRID) if smooth else s).argmax(dim=1)
    assert torch.equal(ranks(c)[:, 0], center)
    d = O.center_distance(center[:, None], GRID).gather(1, ranks(c))
    assert (d[:, 1:] >= d[:, :-1]).all()  # distance never decreases along the order


def test_semantic_lambda_only_breaks_ties():
    s = similarity(batch=1)
    a = O.make_order("semantic", 1, GRID, "cpu", s, lam=1e-3, generator=torch.Generator().manual_seed(0))
    b = O.make_order("semantic", 1, GRID, "cpu", s, lam=1e-3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(ranks(a), ranks(b))  # different tie-breaks ...
    torch.testing.assert_close(a.floor(), b.floor())  # ... same rings


def test_smoothing_is_a_3x3_mean():
    s = torch.zeros(1, N)
    s[0, 2 * 8 + 3] = 9.0
    out = O.smooth3x3(s, GRID).view(GRID)
    assert out[1:4, 2:5].eq(1.0).all() and out.sum() == 9.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_multi_center_centers_come_first_and_are_separated(k):
    s = similarity()
    c = O.make_order("multi_center", 4, GRID, "cpu", s, num_centers=k)
    assert is_permutation(c)
    centers = O.centers_from_similarity(s, GRID, k, min_separation=max(1.0, min(GRID) / 4))
    assert torch.equal(centers[:, 0], s.argmax(1))  # the strongest peak is a center
    first = ranks(c)[:, :k]
    assert torch.equal(first.sort(1).values, centers.sort(1).values)  # every center precedes every other patch
    d = O.center_distance(centers, GRID).gather(1, ranks(c))
    assert (d[:, 1:] >= d[:, :-1]).all()
    coords = O.grid_coords(GRID, "cpu")
    for b in range(4):
        pts = coords[centers[b]]
        assert (torch.cdist(pts, pts) + torch.eye(k) * 99).min() >= min(GRID) / 4


def test_multi_center_with_one_center_is_semantic():
    s = similarity()
    a = O.multi_center(s, GRID, k=1, generator=torch.Generator().manual_seed(3))
    b = O.semantic(s, GRID, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_orders_that_need_similarity_say_so():
    with pytest.raises(ValueError, match="needs the similarity map"):
        O.make_order("semantic", 1, GRID, "cpu")
    with pytest.raises(ValueError, match="unknown order"):
        O.make_order("zigzag", 1, GRID, "cpu")
