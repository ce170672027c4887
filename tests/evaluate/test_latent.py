"""Latent-space maps and interpolations with stand-ins for the VAE: a fixed random linear decoder
and a random projection as encoder, scored by tiny untrained models; hand-computed geometry."""

from __future__ import annotations

import math

import pytest
import torch

from trustmap import uncertainty
from trustmap.errors import ConfigError, DataError
from trustmap.evaluate import latent
from trustmap.evaluate.latent import (
    FAR_SPACINGS,
    LatentGrid,
    Scored,
    confident_far_points,
    distance_to_data,
    encode_images,
    inside_hull,
    latent_grid,
    latent_path,
    low_uncertainty_share,
    pairs_of_different_classes,
    path_midpoints,
    path_scores,
    pixel_path,
    score_images,
)
from trustmap.models import build
from trustmap.predictive import MCDropout, Single

_gen = torch.Generator().manual_seed(0)
W_DECODE = torch.randn(2, 28 * 28, generator=_gen) * 0.3
B_DECODE = torch.randn(28 * 28, generator=_gen) * 0.3
P_ENCODE = torch.randn(28 * 28, 2, generator=_gen) / 28


def decode(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z @ W_DECODE + B_DECODE).view(-1, 1, 28, 28)


def encode(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) @ P_ENCODE


@pytest.fixture(scope="module")
def predictives() -> dict:
    torch.manual_seed(0)
    return {"single": Single(build("lenet5", dropout=0.25)),
            "mc-dropout": MCDropout(build("lenet5", dropout=0.25), samples=4, seed=1)}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# --- the grid ---------------------------------------------------------------------------------

def test_grid_is_row_major_with_z0_along_columns_and_exact_corners():
    grid = latent_grid(decode, resolution=3, bound=2.0)
    assert grid.z.shape == (9, 2) and grid.images.shape == (9, 1, 28, 28)
    assert grid.z.tolist() == [[-2, -2], [0, -2], [2, -2],
                               [-2, 0], [0, 0], [2, 0],
                               [-2, 2], [0, 2], [2, 2]]
    assert grid.axis.tolist() == [-2, 0, 2] and grid.spacing == 2.0
    assert grid.extent == (-2.0, 2.0, -2.0, 2.0)
    # Row i of the map is z1 = axis[i], column j is z0 = axis[j].
    assert grid.as_map(grid.z[:, 0]).tolist() == [[-2, 0, 2]] * 3
    assert grid.as_map(grid.z[:, 1]).tolist() == [[-2] * 3, [0] * 3, [2] * 3]


def test_grid_corners_at_the_paper_size_and_as_map_round_trips():
    grid = latent_grid(decode, resolution=40, bound=10.0, batch_size=500)
    r = 40
    assert grid.z[0].tolist() == [-10, -10] and grid.z[r - 1].tolist() == [10, -10]
    assert grid.z[r * (r - 1)].tolist() == [-10, 10] and grid.z[-1].tolist() == [10, 10]
    values = torch.arange(r * r, dtype=torch.float32)
    mapped = grid.as_map(values)
    assert mapped.shape == (r, r) and mapped[1, 0] == r
    assert torch.equal(mapped.flatten(-2), values)
    assert grid.as_map(torch.stack([values, -values])).shape == (2, r, r)
    with pytest.raises(DataError, match="one entry per grid point"):
        grid.as_map(values[:-1])


def test_grid_images_are_the_decoded_grid_points_in_chunks():
    sizes = []

    def counting(z: torch.Tensor) -> torch.Tensor:
        sizes.append(len(z))
        return decode(z)

    grid = latent_grid(counting, resolution=3, bound=1.5, batch_size=4)
    assert sizes == [4, 4, 1]
    torch.testing.assert_close(grid.images, decode(grid.z))
    expected = decode(torch.tensor([[1.5, -1.5]]))  # z0 = +bound, z1 = -bound: index R - 1
    torch.testing.assert_close(grid.images[2:3], expected)


@pytest.mark.parametrize("kwargs, error", [
    ({"resolution": 1}, ConfigError), ({"resolution": 2.5}, ConfigError),
    ({"bound": 0.0}, ConfigError), ({"bound": -1.0}, ConfigError),
    ({"bound": math.nan}, ConfigError), ({"batch_size": 0}, ConfigError),
])
def test_grid_rejects_bad_settings(kwargs, error):
    with pytest.raises(error):
        latent_grid(decode, **kwargs)


def test_grid_rejects_bad_decoders():
    with pytest.raises(DataError, match="values must lie in"):
        latent_grid(lambda z: decode(z) * 3, resolution=2)
    with pytest.raises(DataError, match="one row per input"):
        latent_grid(lambda z: decode(z)[:1], resolution=2)
    with pytest.raises(DataError, match="NaN"):
        latent_grid(lambda z: decode(z) * math.nan, resolution=2)
    with pytest.raises(ConfigError, match="callable"):
        latent_grid(decode(torch.zeros(1, 2)), resolution=2)


# --- scoring ----------------------------------------------------------------------------------

def test_scores_equal_the_measures_of_each_predictives_prediction(predictives):
    images = latent_grid(decode, resolution=3).images
    scored = score_images(images, predictives, ["entropy", "mutual_information", "msp"])
    assert set(scored.scores) == {"single", "mc-dropout"}
    for kind, predictive in predictives.items():
        prediction = predictive.predict(images)
        expected = uncertainty.compute(prediction, ["entropy", "mutual_information", "msp"])
        assert list(scored.scores[kind]) == ["entropy", "mutual_information", "msp"]
        for name, values in expected.items():
            assert scored.scores[kind][name].shape == (9,)
            torch.testing.assert_close(scored.scores[kind][name], values)
        assert torch.equal(scored.predicted[kind], prediction.mean_probs.argmax(1))
    # MC dropout's samples disagree, the single model's single sample cannot.
    assert bool((scored.scores["mc-dropout"]["mutual_information"] > 0).any())
    assert bool((scored.scores["single"]["mutual_information"] == 0).all())


def test_default_measures_are_those_of_the_probabilities(predictives):
    scored = score_images(_images(2), {"single": predictives["single"]})
    expected = list(uncertainty.MEASURES)
    assert list(scored.scores["single"]) == expected


def test_scoring_checks_names_before_any_forward_pass(predictives):
    class Exploding(Single):
        def sample_logits(self, x):
            raise AssertionError("ran a forward pass before checking the measure names")

    boom = {"boom": Exploding(build("lenet"))}
    with pytest.raises(ConfigError, match="did you mean 'entropy'"):
        score_images(_images(2), boom, ["entrop"])
    with pytest.raises(ConfigError, match=r"pass \['entropy'\]"):
        score_images(_images(2), boom, "entropy")
    with pytest.raises(ConfigError, match="empty"):
        score_images(_images(2), boom, [])
    with pytest.raises(ConfigError, match="unknown uncertainty measure 'gradcam_cv'"):
        score_images(_images(2), boom, ["gradcam_cv"])  # a score of maps, not of probabilities
    with pytest.raises(ConfigError, match="non-empty mapping"):
        score_images(_images(2), {}, ["entropy"])
    with pytest.raises(ConfigError, match="not a Predictive"):
        score_images(_images(2), {"raw": build("lenet")}, ["entropy"])
    with pytest.raises(DataError, match="values must lie in"):
        score_images(_images(2) + 1, predictives, ["entropy"])


# --- geometry ---------------------------------------------------------------------------------

SQUARE = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])


def test_inside_hull_of_a_square_by_hand():
    points = torch.tensor([[0.0, 0.0], [0.5, -0.9], [3.0, 3.0], [1.1, 0.0], [1.0, 0.0],
                           [1.0, 1.0]])
    # Centre and an interior point are inside, a far corner and a point just past the right
    # edge are outside; a point on an edge and a vertex count as inside (documented).
    assert inside_hull(SQUARE, points).tolist() == [True, True, False, False, True, True]
    # Interior data points and repeated codes change nothing.
    data = torch.cat([SQUARE, torch.zeros(3, 2), SQUARE])
    assert inside_hull(data, points).tolist() == [True, True, False, False, True, True]


@pytest.mark.parametrize("data, match", [
    (torch.tensor([[0.0, 0.0], [1.0, 1.0]]), "2 distinct"),
    (torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]), "2 distinct"),
    (torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), "one line"),
    (torch.tensor([[0.0, 0.0], [1.0, math.nan], [2.0, 0.0]]), "NaN"),
    (torch.zeros(4, 3), r"\[P, 2\]"),
    (torch.zeros(0, 2), "empty"),
])
def test_inside_hull_rejects_degenerate_data(data, match):
    with pytest.raises(DataError, match=match):
        inside_hull(data, torch.zeros(1, 2))


def test_distance_to_data_by_hand_in_several_chunks(monkeypatch):
    points = torch.tensor([[0.0, 0.0], [4.0, 5.0], [-1.0, 1.0], [-1.0, 3.0], [1.0, -1.5]])
    expected = [math.sqrt(2), 5.0, 0.0, 2.0, 0.5]
    assert distance_to_data(SQUARE, points).tolist() == pytest.approx(expected, abs=1e-6)
    monkeypatch.setattr(latent, "_CDIST_ELEMENTS", 8)  # two points per chunk
    assert distance_to_data(SQUARE, points).tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(DataError, match="NaN"):
        distance_to_data(SQUARE, torch.tensor([[math.inf, 0.0]]))


def test_low_uncertainty_share_by_hand():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.2, 0.7])
    near = torch.tensor([True, True, True, False, False, False])
    # Below 0.5 (strictly): points 0, 2 (near) and 4 (far); 0.5 itself is not below.
    out = low_uncertainty_share(scores, near, threshold=0.5)
    assert out == {"threshold": 0.5,
                   "share": pytest.approx(3 / 6), "points": 6, "low": 3,
                   "share_near": pytest.approx(2 / 3), "points_near": 3, "low_near": 2,
                   "share_far": pytest.approx(1 / 3), "points_far": 3, "low_far": 1}
    everything_near = low_uncertainty_share(scores, torch.ones(6, dtype=torch.bool), 0.5)
    assert math.isnan(everything_near["share_far"]) and everything_near["points_far"] == 0
    assert everything_near["share_near"] == pytest.approx(0.5)


def test_low_uncertainty_share_rejects_bad_input():
    scores = torch.tensor([0.1, 0.2])
    with pytest.raises(DataError, match="bool tensor"):
        low_uncertainty_share(scores, torch.tensor([1, 0]), 0.5)
    with pytest.raises(DataError, match="bool tensor"):
        low_uncertainty_share(scores, torch.tensor([True]), 0.5)
    with pytest.raises(DataError, match="NaN"):
        low_uncertainty_share(torch.tensor([0.1, math.nan]), torch.tensor([True, False]), 0.5)
    with pytest.raises(ConfigError, match="threshold"):
        low_uncertainty_share(scores, torch.tensor([True, False]), math.nan)


def _grid3() -> LatentGrid:
    return latent_grid(decode, resolution=3, bound=1.0)  # spacing 1


def test_confident_far_points_picks_the_lowest_scores_among_far_points():
    grid = _grid3()
    scores = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.05, 0.9, 0.3, 0.3, 0.6])
    distance = torch.tensor([4.0, 0.5, 3.0, 3.5, 0.0, 3.0, 2.9, 5.0, 3.0])
    # Far (>= 3): 0, 2, 3, 5, 7, 8 with scores 0.5, 0.4, 0.2, 0.9, 0.3, 0.6; 1 and 4 score
    # lower but are near, 6 is just too close.
    picked = confident_far_points(grid, scores, distance, k=3, min_distance=3.0)
    assert picked.dtype == torch.long and picked.tolist() == [3, 7, 2]
    assert confident_far_points(grid, scores, distance, k=20, min_distance=3.0).tolist() == [
        3, 7, 2, 0, 8, 5]
    assert confident_far_points(grid, scores, distance, k=2, min_distance=9.0).tolist() == []
    # Default: FAR_SPACINGS grid spacings, here 3 * 1.
    assert FAR_SPACINGS * grid.spacing == 3.0
    assert confident_far_points(grid, scores, distance, k=3).tolist() == [3, 7, 2]


def test_confident_far_points_rejects_bad_input():
    grid = _grid3()
    scores = torch.rand(9)
    with pytest.raises(DataError, match="9 points"):
        confident_far_points(grid, scores[:8], torch.ones(9))
    with pytest.raises(ConfigError, match="k must"):
        confident_far_points(grid, scores, torch.ones(9), k=0)
    with pytest.raises(ConfigError, match="LatentGrid"):
        confident_far_points(grid.z, scores, torch.ones(9))


# --- interpolation ----------------------------------------------------------------------------

def test_pixel_path_runs_from_a_to_b_through_their_mean():
    a, b = _images(3, seed=1), _images(3, seed=2)
    path = pixel_path(a, b, steps=5)
    assert path.shape == (3, 5, 1, 28, 28)
    assert torch.equal(path[:, 0], a) and torch.equal(path[:, -1], b)
    assert torch.equal(path[:, 2], (a + b) / 2)
    torch.testing.assert_close(path[:, 1], 0.75 * a + 0.25 * b)
    assert pixel_path(a, b, steps=2).shape == (3, 2, 1, 28, 28)


def test_latent_path_decodes_the_line_between_the_codes():
    a, b = _images(2, seed=3), _images(2, seed=4)
    path = latent_path(encode, decode, a, b, steps=3, batch_size=4)
    assert path.shape == (2, 3, 1, 28, 28)
    torch.testing.assert_close(path[:, 0], decode(encode(a)))
    torch.testing.assert_close(path[:, -1], decode(encode(b)))
    torch.testing.assert_close(path[:, 1], decode((encode(a) + encode(b)) / 2))
    torch.testing.assert_close(encode_images(encode, a, batch_size=1), encode(a))


def test_paths_reject_bad_input():
    a = _images(2)
    with pytest.raises(ConfigError, match="steps"):
        pixel_path(a, a, steps=1)
    with pytest.raises(ConfigError, match="steps"):
        latent_path(encode, decode, a, a, steps=1)
    with pytest.raises(DataError, match="paired images"):
        pixel_path(a, _images(3), steps=3)
    with pytest.raises(DataError, match="mean code alone"):
        latent_path(lambda x: (encode(x), encode(x)), decode, a, a, steps=3)
    with pytest.raises(DataError, match="NaN"):
        latent_path(lambda x: encode(x) * math.nan, decode, a, a, steps=3)


def test_path_scores_and_midpoints(predictives):
    a, b = _images(2, seed=5), _images(2, seed=6)
    paths = pixel_path(a, b, steps=3)
    scored = path_scores(paths, predictives, ["entropy", "mutual_information"])
    flat = score_images(paths.flatten(0, 1), predictives, ["entropy", "mutual_information"])
    for kind in predictives:
        for name in ("entropy", "mutual_information"):
            assert scored.scores[kind][name].shape == (2, 3)
            torch.testing.assert_close(scored.scores[kind][name].flatten(),
                                       flat.scores[kind][name])
        assert torch.equal(scored.predicted[kind].flatten(), flat.predicted[kind])
    middle = path_midpoints(scored)
    for kind in predictives:
        for name in ("entropy", "mutual_information"):
            assert torch.equal(middle.scores[kind][name], scored.scores[kind][name][:, 1])
        assert torch.equal(middle.predicted[kind], scored.predicted[kind][:, 1])
    # The middle step is the mean image (MC dropout's masks depend on the batch, so only the
    # deterministic model can be compared with a separate pass).
    single = {"single": predictives["single"]}
    direct = score_images((a + b) / 2, single, ["entropy", "mutual_information"])
    for name in ("entropy", "mutual_information"):
        torch.testing.assert_close(middle.scores["single"][name], direct.scores["single"][name])
    assert torch.equal(middle.predicted["single"], direct.predicted["single"])
    even = path_scores(pixel_path(a, b, steps=4), predictives, ["entropy"])
    with pytest.raises(ConfigError, match="odd number of steps, e.g. 5"):
        path_midpoints(even)
    with pytest.raises(DataError, match=r"\[N, steps\]"):
        path_midpoints(Scored({"x": {"entropy": torch.zeros(3)}}, {"x": torch.zeros(3)}))
    with pytest.raises(DataError, match="pixel_path"):
        path_scores(a, predictives)


def test_pairs_differ_in_label_are_seeded_and_uniform_over_other_classes():
    labels = torch.tensor([0, 0, 0, 7, 7, 2, 2, 2, 2, 5])
    a, b = pairs_of_different_classes(labels, 20000, seed=3)
    assert a.dtype == b.dtype == torch.long and a.shape == b.shape == (20000,)
    assert bool((labels[a] != labels[b]).all())
    again = pairs_of_different_classes(labels, 20000, seed=3)
    assert torch.equal(again[0], a) and torch.equal(again[1], b)
    other = pairs_of_different_classes(labels, 20000, seed=4)
    assert not torch.equal(other[1], b)
    # P(b = j) = sum over classes c != class(j) of P(a in c) / (N - |c|).
    sizes = {0: 3, 7: 2, 2: 4, 5: 1}
    expected = [sum(size / 10 / (10 - size) for c, size in sizes.items() if c != int(label))
                for label in labels]
    observed = torch.bincount(b, minlength=10).double() / 20000
    assert observed.tolist() == pytest.approx(expected, abs=0.015)
    assert (torch.bincount(a, minlength=10).double() / 20000).tolist() == pytest.approx(
        [0.1] * 10, abs=0.015)


def test_pairs_reject_bad_labels():
    with pytest.raises(DataError, match="single class"):
        pairs_of_different_classes(torch.zeros(5, dtype=torch.long), 3)
    with pytest.raises(DataError, match="integer tensor"):
        pairs_of_different_classes(torch.zeros(5), 3)
    with pytest.raises(ConfigError, match="n must"):
        pairs_of_different_classes(torch.tensor([0, 1]), 0)
