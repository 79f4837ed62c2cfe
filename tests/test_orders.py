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
    """Strict ranks: each row holds 0 .. N - 1 exactly once (so no two patches tie)."""
    return torch.equal(c.sort(dim=1).values, torch.arange(c.shape[1]).float().expand_as(c))


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


def test_snake_is_the_authors_raster():
    """The authors' 'raster' is boustrophedon; on their 14 x 14 grid it is 13 - col on odd rows."""
    c = O.make_order("snake", 1, (14, 14), "cpu").view(14, 14)
    rows = torch.arange(14)[:, None] * 14
    cols = torch.arange(14)[None]
    expected = torch.where(torch.arange(14)[:, None] % 2 == 1, rows + 13 - cols, rows + cols)
    assert torch.equal(c, expected.float())
    assert is_permutation(O.make_order("snake", 2, GRID, "cpu"))


def test_semantic_never_ties_where_the_float32_sum_does():
    """distance + 1e-3 * U in float32 ties on some ViT-B images; our ranks never tie, and they
    equal the float32 argsort (same draw) on every image where that sum has no tie."""
    grid, b = (14, 14), 512
    s = torch.rand(b, 196)
    center = s.argmax(1)
    c = O.semantic(s, grid, lam=1e-3, generator=torch.Generator().manual_seed(0))
    u = torch.rand(b, 196, generator=torch.Generator().manual_seed(0))
    coords = O.grid_coords(grid, "cpu").float()
    authors = ((coords[None] - coords[center][:, None]) ** 2).sum(-1).sqrt() + u * 1e-3  # float32, as theirs
    tied = torch.tensor([len(set(row.tolist())) < 196 for row in authors])
    assert 0.05 < tied.float().mean() < 0.3  # the problem is real at this size
    assert is_permutation(c)
    assert torch.equal(ranks(c)[~tied], authors[~tied].argsort(dim=1, stable=True))


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
    d = O.center_distance(s.argmax(1)[:, None], GRID)
    assert torch.equal(d.gather(1, ranks(a)), d.gather(1, ranks(b)))  # ... the same rings in the same sequence


def test_smoothing_is_a_3x3_mean_of_valid_neighbours():
    s = torch.zeros(1, N)
    s[0, 2 * 8 + 3] = 9.0
    out = O.smooth3x3(s, GRID).view(GRID)
    assert out[1:4, 2:5].eq(1.0).all() and out.sum() == 9.0
    corner = torch.zeros(1, N)
    corner[0, :2], corner[0, 8:10] = 4.0, 4.0  # the 2 x 2 block in the corner
    assert O.smooth3x3(corner, GRID)[0, 0] == 4.0  # 4 valid neighbours, not 9 with zero padding


@pytest.mark.parametrize("k", [1, 2, 3])
def test_multi_center_centers_come_first_and_are_separated(k):
    s = similarity()
    c = O.make_order("multi_center", 4, GRID, "cpu", s, num_centers=k)
    assert is_permutation(c)
    centers = O.centers_from_similarity(s, GRID, k, min_separation=max(1.0, min(GRID) / 4))
    assert torch.equal(centers[:, 0], s.argmax(1))  # the strongest peak is a center
    d = O.center_distance(centers, GRID).gather(1, ranks(c))
    assert (d[:, 1:] >= d[:, :-1]).all()  # every center (distance 0) precedes every other patch
    coords = O.grid_coords(GRID, "cpu").float()
    for b in range(4):
        distinct = centers[b].unique()
        assert set(ranks(c)[b, :len(distinct)].tolist()) == set(distinct.tolist())
        pts = coords[distinct]
        assert (torch.cdist(pts, pts) + torch.eye(len(distinct)) * 99).min() >= min(GRID) / 4


def test_multi_center_adds_a_center_only_at_a_strong_local_maximum():
    flat = torch.zeros(GRID)
    flat[1, 1] = 1.0   # the strongest peak
    flat[4, 6] = 0.9   # a local maximum of 90% strength, far away: a second center
    flat[4, 2] = 0.5   # a weak local maximum: never a center
    s = flat.view(1, N)
    centers = O.centers_from_similarity(s, GRID, 3, min_separation=2.0)
    assert centers.tolist() == [[1 * 8 + 1, 4 * 8 + 6, 1 * 8 + 1]]  # the third slot repeats the first
    slope = torch.linspace(0, 1, N).view(1, N)  # one maximum only: one center
    assert O.centers_from_similarity(slope, GRID, 2, 2.0).tolist() == [[N - 1, N - 1]]
    c = O.multi_center(s, GRID, k=2, min_separation=2.0)
    assert sorted(ranks(c)[0, :2].tolist()) == [1 * 8 + 1, 4 * 8 + 6]


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
