"""Joining track pieces that lie on one trajectory: the rule, its settings, the bundle and the tools."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from trackserve.bundle import JoinSettings, StageParameters, load_bundle
from trackserve.errors import BundleError, InputError
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.piece_joining import MIN_HITS_TO_ATTACH, hit_positions, join_pieces
from trackserve.runtime.pipeline import Pipeline
from trackserve.runtime.track_building import build_tracks, hit_distances
from trackserve.serving.interface import STAGE_NAMES
from trackserve.serving.stages import make_stage, run_stages

from ..conftest import assert_stages_refused, copy_with_stages

RADII = np.array([32.0, 72.0, 116.0, 172.0, 260.0, 360.0, 500.0, 660.0, 820.0, 1020.0])
SETTINGS = JoinSettings(min_score=0.2, transverse_mm=5.0, z_mm=10.0, single_hit_scale=0.5, rounds=3)


def _wrap(angle):
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _reference_round(labels, edges, scores, positions, order, settings):
    """One round of the joining rule written as loops, with numpy.polyfit for the lines
    (scores are probabilities)."""
    r, phi, z = positions.T
    pieces = {}
    for hit, label in enumerate(labels):
        pieces.setdefault(int(label), []).append(hit)
    inner_end, outer_end, fits = {}, {}, {}
    for label, hits in pieces.items():
        hits = sorted(hits, key=lambda h: (order[h], h))
        inner_end[label], outer_end[label] = hits[0], hits[-1]
        if len(hits) >= 2 and np.ptp(r[hits]) > 1e-6:
            reference = phi[hits[0]]
            phi_line = np.polyfit(r[hits], [_wrap(phi[h] - reference) for h in hits], 1)
            z_line = np.polyfit(r[hits], z[hits], 1)
            fits[label] = (reference, phi_line, z_line)

    def residual(label, hit):
        if label not in fits:
            return math.inf
        reference, (phi_slope, phi_zero), (z_slope, z_zero) = fits[label]
        across = abs(_wrap(phi[hit] - reference - phi_zero - phi_slope * r[hit])) * r[hit]
        along = abs(z[hit] - z_zero - z_slope * r[hit])
        return max(across / settings.transverse_mm, along / settings.z_mm)

    candidates = []
    for e, (a, b) in enumerate(edges.T):
        if not scores[e] > settings.min_score:
            continue
        inner, outer = min((order[a], a), (order[b], b))[1], max((order[a], a), (order[b], b))[1]
        low, high = int(labels[inner]), int(labels[outer])
        if low == high or outer_end[low] != inner or inner_end[high] != outer:
            continue
        sizes = len(pieces[low]), len(pieces[high])
        if low in fits and high in fits:
            value = max(residual(low, outer), residual(high, inner))
        elif settings.single_hit_scale > 0 and sizes[1] == 1 and sizes[0] >= MIN_HITS_TO_ATTACH and low in fits:
            value = residual(low, outer) / settings.single_hit_scale
        elif settings.single_hit_scale > 0 and sizes[0] == 1 and sizes[1] >= MIN_HITS_TO_ATTACH and high in fits:
            value = residual(high, inner) / settings.single_hit_scale
        else:
            continue
        if value < 1.0:
            candidates.append((value, e, inner, outer, low, high))
    best_at_inner, best_at_outer = {}, {}
    for candidate in candidates:
        value, e, inner, outer = candidate[:4]
        for best, hit in ((best_at_inner, inner), (best_at_outer, outer)):
            if hit not in best or (value, e) < best[hit][:2]:
                best[hit] = candidate
    parent = {label: label for label in pieces}

    def root(label):
        while parent[label] != label:
            label = parent[label]
        return label

    joined = 0
    for candidate in candidates:
        if best_at_inner[candidate[2]] is candidate and best_at_outer[candidate[3]] is candidate:
            parent[root(candidate[4])] = root(candidate[5])
            joined += 1
    return np.array([root(int(label)) for label in labels]), joined


def _first_appearance(labels):
    seen = {}
    return np.array([seen.setdefault(int(label), len(seen)) for label in labels])


def _random_tracks(seed, num_tracks=40, noise=40):
    """Straight-line tracks in phi(r) and z(r) with measurement noise (one across phi = +-pi),
    noise hits, pieces cut at random, and candidate edges: most consecutive hits of a track
    plus random pairs, with many equal scores."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for track in range(num_tracks):
        phi0 = math.pi - 0.001 if track == 0 else rng.uniform(-math.pi, math.pi)
        slope, z0, cot = rng.normal(0, 4e-4), rng.normal(0, 50), rng.normal(0, 1.5)
        radii = RADII[: rng.integers(4, RADII.size + 1)]
        for r in radii:
            rows.append((r, _wrap(phi0 + slope * r + rng.normal(0, 1.0) / r), z0 + cot * r + rng.normal(0, 3.0)))
            truth.append(track)
    for _ in range(noise):
        rows.append((rng.choice(RADII), rng.uniform(-math.pi, math.pi), rng.uniform(-1000, 1000)))
        truth.append(-1)
    positions = np.array(rows)
    truth = np.array(truth)
    order = np.hypot(positions[:, 0], positions[:, 2])
    labels = np.arange(truth.size)
    next_label = truth.size
    edges = []
    for track in range(num_tracks):
        hits = np.flatnonzero(truth == track)
        hits = hits[np.argsort(order[hits])]
        cuts = np.sort(rng.choice(np.arange(1, hits.size), size=rng.integers(0, 3), replace=False))
        for piece in np.split(hits, cuts):
            labels[piece] = next_label
            next_label += 1
        edges += [(a, b) for a, b in zip(hits[:-1], hits[1:]) if rng.random() < 0.9]
    edges += [tuple(rng.integers(0, truth.size, 2)) for _ in range(4 * truth.size)]
    edges = np.array(edges).T
    flip = rng.random(edges.shape[1]) < 0.5
    edges[:, flip] = edges[::-1, flip]
    scores = rng.integers(0, 10, edges.shape[1]) / 10.0
    return _first_appearance(labels), edges.astype(np.int64), scores, positions, order, truth


@pytest.mark.parametrize("rounds", [1, 3])
@pytest.mark.parametrize("seed", range(5))
def test_join_pieces_matches_the_rule_written_as_loops(seed, rounds):
    labels, edges, scores, positions, order, _ = _random_tracks(seed)
    settings = JoinSettings(0.2, 5.0, 10.0, 0.5, rounds)
    expected, total = labels, 0
    for _ in range(rounds):
        expected, joined = _reference_round(expected, edges, scores, positions, order, settings)
        total += joined
        if not joined:
            break
    got = join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False)
    assert total > 5  # the random events do join pieces
    np.testing.assert_array_equal(got, _first_appearance(expected))


def test_joins_only_pieces_of_one_trajectory_and_never_branches():
    labels, edges, scores, positions, order, truth = _random_tracks(11, num_tracks=60)
    joined = join_pieces(labels, edges, scores, positions, order, SETTINGS, scores_are_logits=False)
    assert len(np.unique(joined)) < len(np.unique(labels))
    for track in np.unique(joined):
        hits = np.flatnonzero(joined == track)
        # a track is a chain of pieces: one particle (or one lone noise hit) and one hit per radius
        assert len(set(truth[hits])) == 1 or len(hits) == 1
        assert len(np.unique(positions[hits, 0])) == len(hits)


def _line(phi0, slope, z0, cot, radii):
    return np.array([(r, phi0 + slope * r, z0 + cot * r) for r in radii])


def _two_pieces(shift_phi=0.0, shift_z=0.0, first=3, second=3):
    """One track in two pieces (hits 0..first-1 and first..first+second-1), the second moved
    by ``shift_phi`` rad and ``shift_z`` mm, with the edge between them scoring 0.3."""
    positions = _line(0.5, 2e-4, 10.0, 0.8, RADII[: first + second])
    positions[first:, 1] += shift_phi
    positions[first:, 2] += shift_z
    labels = np.array([0] * first + [1] * second)
    edges = np.array([[first - 1], [first]])
    return labels, edges, np.array([0.3]), positions, np.hypot(positions[:, 0], positions[:, 2])


def test_tolerances_decide_a_join_across_and_along_the_beam():
    settings = JoinSettings(0.2, 5.0, 10.0, 0.0, 1)
    labels, edges, scores, positions, order = _two_pieces()
    assert join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False).tolist() == [0] * 6
    # 6 mm across at r = 172 mm (the second piece's first hit) is beyond 5 mm; 3 mm is within
    for shift, joined in ((6.0 / 172.0, False), (3.0 / 172.0, True)):
        labels, edges, scores, positions, order = _two_pieces(shift_phi=shift)
        result = join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False)
        assert (len(set(result.tolist())) == 1) is joined
    for shift, joined in ((12.0, False), (8.0, True)):
        labels, edges, scores, positions, order = _two_pieces(shift_z=shift)
        result = join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False)
        assert (len(set(result.tolist())) == 1) is joined
    # an edge at or below min_score is no candidate (0.3 > 0.2 passes; with 0.3 it does not)
    labels, edges, scores, positions, order = _two_pieces()
    strict = JoinSettings(0.3, 5.0, 10.0, 0.0, 1)
    assert join_pieces(labels, edges, scores, positions, order, strict, scores_are_logits=False).tolist() == [0] * 3 + [1] * 3
    # logits: the same rule on logit(0.3)
    logits = np.log(scores / (1 - scores))
    assert join_pieces(labels, edges, logits, positions, order, settings).tolist() == [0] * 6


def test_a_lone_hit_joins_a_long_enough_piece_within_the_tighter_tolerances():
    settings = JoinSettings(0.2, 5.0, 10.0, 0.5, 1)
    labels, edges, scores, positions, order = _two_pieces(first=MIN_HITS_TO_ATTACH, second=1)
    assert join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False).tolist() == [0] * 4
    # 3 mm across is within 5 mm but not within half of it
    labels, edges, scores, positions, order = _two_pieces(shift_phi=3.0 / 172.0, first=MIN_HITS_TO_ATTACH, second=1)
    assert join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False).tolist() == [0, 0, 0, 1]
    # never with single_hit_scale 0, never to a piece of fewer hits
    labels, edges, scores, positions, order = _two_pieces(first=MIN_HITS_TO_ATTACH, second=1)
    no_lone = JoinSettings(0.2, 5.0, 10.0, 0.0, 1)
    assert join_pieces(labels, edges, scores, positions, order, no_lone, scores_are_logits=False).tolist() == [0, 0, 0, 1]
    labels, edges, scores, positions, order = _two_pieces(first=MIN_HITS_TO_ATTACH - 1, second=1)
    assert join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False).tolist() == [0, 0, 1]


def _forked_track(copied: slice):
    """Pieces 0, 1, 2 of three hits each: a six-hit track whose hits ``copied`` (its first or
    last three) appear once more 2 mm off across, as an extra piece placed where they are."""
    track = _line(0.5, 2e-4, 10.0, 0.8, RADII[:6])
    off = track[copied].copy()
    off[:, 1] += 2.0 / off[:, 0]
    positions = np.concatenate([track, off]) if copied.start else np.concatenate([track[:3], off, track[3:]])
    return np.repeat([0, 1, 2], 3), positions, np.hypot(positions[:, 0], positions[:, 2])


def test_each_end_takes_its_closest_piece_and_rounds_join_chains():
    # piece 0 could continue into piece 1 or into piece 2 (the same hits 2 mm off): it takes
    # the closer one, and piece 2 stays alone
    labels, positions, order = _forked_track(slice(3, 6))
    for edges, scores in (([[2, 2], [6, 3]], [0.9, 0.3]), ([[2, 2], [3, 6]], [0.3, 0.9])):
        result = join_pieces(labels, np.array(edges), np.array(scores), positions, order, SETTINGS,
                             scores_are_logits=False)
        assert result.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    # and the mirror case: piece 2 could be continued by piece 0 or by piece 1 (piece 0's hits
    # 2 mm off): it takes the closer one, and piece 1 stays alone
    labels, positions, order = _forked_track(slice(0, 3))
    for edges, scores in (([[5, 2], [6, 6]], [0.9, 0.3]), ([[2, 5], [6, 6]], [0.3, 0.9])):
        result = join_pieces(labels, np.array(edges), np.array(scores), positions, order, SETTINGS,
                             scores_are_logits=False)
        assert result.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    # two hits, one lone hit, three hits: the lone hit joins the three in round 1 and the
    # pair joins them in round 2 (a pair cannot take a lone hit)
    positions = _line(0.5, 2e-4, 10.0, 0.8, RADII[:6])
    labels = np.array([0, 0, 1, 2, 2, 2])
    order = np.hypot(positions[:, 0], positions[:, 2])
    edges = np.array([[1, 2], [2, 3]])
    scores = np.array([0.9, 0.9])
    for rounds, expected in ((1, [0, 0, 1, 1, 1, 1]), (2, [0] * 6), (5, [0] * 6)):
        settings = JoinSettings(0.2, 5.0, 10.0, 0.5, rounds)
        assert join_pieces(labels, edges, scores, positions, order, settings, scores_are_logits=False).tolist() == expected


def test_tracks_across_phi_pi_are_fitted_unwrapped():
    positions = _line(math.pi - 0.002, 1e-5, 0.0, 0.5, RADII[:6])
    positions[:, 1] = [_wrap(value) for value in positions[:, 1]]
    assert positions[:, 1].min() < 0 < positions[:, 1].max()
    labels = np.array([0, 0, 0, 1, 1, 1])
    order = np.hypot(positions[:, 0], positions[:, 2])
    result = join_pieces(labels, np.array([[2], [3]]), np.array([0.5]), positions, order, SETTINGS,
                         scores_are_logits=False)
    assert result.tolist() == [0] * 6


def test_empty_one_hit_and_no_candidate_events():
    empty = np.zeros((2, 0), dtype=np.int64)
    assert join_pieces(np.zeros(0, dtype=np.int64), empty, np.zeros(0), np.zeros((0, 3)), np.zeros(0),
                       SETTINGS).tolist() == []
    assert join_pieces(np.array([0]), empty, np.zeros(0), np.array([[30.0, 0.1, 5.0]]), np.array([30.0]),
                       SETTINGS).tolist() == [0]
    labels = np.array([3, 1, 3, 0])  # compacted in first-appearance order
    positions = _line(0.5, 2e-4, 10.0, 0.8, RADII[:4])
    assert join_pieces(labels, empty, np.zeros(0), positions, positions[:, 0], SETTINGS).tolist() == [0, 1, 0, 2]
    assert build_tracks(0, empty, np.zeros(0), 0.5, method="best_edges", hit_order=np.zeros(0), join=SETTINGS,
                        positions=np.zeros((0, 3))).tolist() == []


@pytest.mark.parametrize("fields, message", [
    ({"min_score": 1.5}, r"min_score 1.5 is outside \[0, 1\]"),
    ({"transverse_mm": 0.0}, "transverse_mm must be above 0 mm"),
    ({"z_mm": float("nan")}, "z_mm must be a finite number"),
    ({"single_hit_scale": -0.1}, r"single_hit_scale -0.1 is outside \[0, 1\]"),
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"rounds": 2.0}, "rounds must be an integer >= 1"),
    ({"min_score": True}, "min_score must be a finite number"),
])
def test_bad_settings_are_refused_naming_the_field(fields, message):
    values = {**SETTINGS.to_dict(), **fields}
    with pytest.raises(BundleError, match=message):
        JoinSettings(**values)
    with pytest.raises(BundleError, match=message):
        JoinSettings.from_mapping(values)


def test_bad_inputs_are_refused():
    labels, edges, scores, positions, order = _two_pieces()
    with pytest.raises(BundleError, match="missing rounds"):
        JoinSettings.from_mapping({k: v for k, v in SETTINGS.to_dict().items() if k != "rounds"})
    with pytest.raises(BundleError, match="unknown walk"):
        JoinSettings.from_mapping({**SETTINGS.to_dict(), "walk": 1})
    with pytest.raises(InputError, match="labels must be a 1-D array of integers >= 0"):
        join_pieces(labels - 1, edges, scores, positions, order, SETTINGS)
    with pytest.raises(InputError, match=r"scores must have shape \[1\] \(one per edge\)"):
        join_pieces(labels, edges, np.zeros(2), positions, order, SETTINGS)
    with pytest.raises(InputError, match="edge_index refers to hit 6, but the event has 6 hits"):
        join_pieces(labels, edges + 4, scores, positions, order, SETTINGS)
    with pytest.raises(InputError, match=r"hit_order must be a real array of shape \[6\]"):
        join_pieces(labels, edges, scores, positions, order[:5], SETTINGS)
    with pytest.raises(InputError, match=r"positions must be a real array of shape \[6, 3\] \(r, phi, z per hit\)"):
        join_pieces(labels, edges, scores, positions[:, :2], order, SETTINGS)
    bad = positions.copy()
    bad[4, 2] = np.nan
    with pytest.raises(InputError, match="positions of hit 4 is not finite"):
        join_pieces(labels, edges, scores, bad, order, SETTINGS)
    # QA, 2026-12-02: each of these got past the checks (raw numpy errors, a silent answer, or a
    # label of 10**9 allocating by it until the process was killed)
    with pytest.raises(InputError, match="labels must number the tracks 0..T-1 with T at most the 6 hits; got label"):
        join_pieces(labels + 10**9, edges, scores, positions, order, SETTINGS)
    with pytest.raises(InputError, match="edge_index must hold integers"):
        join_pieces(labels, edges.astype(float), scores, positions, order, SETTINGS)
    with pytest.raises(InputError, match="edge_index must hold integers"):
        join_pieces(labels, edges.astype(bool), scores, positions, order, SETTINGS)
    with pytest.raises(InputError, match="scores must be floating-point; got dtype bool"):
        join_pieces(labels, edges, scores > 0, positions, order, SETTINGS)
    with pytest.raises(InputError, match="score of edge 0 is NaN"):
        join_pieces(labels, edges, np.full(scores.shape, np.nan), positions, order, SETTINGS)
    with pytest.raises(InputError, match="hit_order must be a real array"):
        join_pieces(labels, edges, scores, positions, order > 0, SETTINGS)
    with pytest.raises(InputError, match="hit_order of hit 2 is not finite"):
        join_pieces(labels, edges, scores, positions, np.where(np.arange(6) == 2, np.inf, order), SETTINGS)
    with pytest.raises(InputError, match="positions must be a real array"):
        join_pieces(labels, edges, scores, positions > 0, order, SETTINGS)
    masked = np.ma.masked_array(scores, mask=np.arange(scores.size) == 0)
    with pytest.raises(InputError, match="scores is a masked array with 1 masked value"):
        join_pieces(labels, edges, masked, positions, order, SETTINGS)


def test_the_labels_returned_are_never_the_callers_array():
    labels, edges, scores, positions, order = _two_pieces()
    compact = np.arange(6, dtype=np.int64)  # compact already, and nothing to join below the cut
    result = join_pieces(compact, edges, np.full(scores.shape, -50.0), positions, order, SETTINGS)
    np.testing.assert_array_equal(result, compact)
    assert not np.shares_memory(result, compact)


def test_bad_inputs_to_track_building_with_joining_are_refused():
    labels, edges, scores, positions, order = _two_pieces()
    with pytest.raises(InputError, match="needs track building 'best_edges', not 'components'"):
        build_tracks(6, edges, scores, 0.5, join=SETTINGS, positions=positions)
    with pytest.raises(InputError, match="needs positions"):
        build_tracks(6, edges, scores, 0.5, method="best_edges", hit_order=order, join=SETTINGS)
    with pytest.raises(InputError, match="join must be JoinSettings"):
        build_tracks(6, edges, scores, 0.5, method="best_edges", hit_order=order, join={"rounds": 1},
                     positions=positions)
    with pytest.raises(InputError, match=r"needs the features r, phi and z; these features are \['r', 'z'\]"):
        hit_positions(positions[:, [0, 2]], ["r", "z"], [1.0, 1.0])
    # before: an IndexError from inside numpy for a scale short, and a silently shorter table or a
    # TypeError for features of the wrong shape or a list
    with pytest.raises(InputError, match=r"3 feature names \['r', 'phi', 'z'\] but 1 scales"):
        hit_positions(positions, ["r", "phi", "z"], [3000.0])
    with pytest.raises(InputError, match=r"as a numeric \[N, 3\] array \(r, phi, z\); got float64 \(6, 2\)"):
        hit_positions(positions[:, :2], ["r", "phi", "z"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(hit_positions(positions.tolist(), ["r", "phi", "z"], [1.0, 1.0, 1.0]), positions)


@pytest.fixture(scope="module")
def join_bundle(tiny_bundle, tmp_path_factory):
    # wide tolerances: the random networks' pieces are not tracks
    return copy_with_stages(tiny_bundle, tmp_path_factory.mktemp("join_bundle") / "bundle",
                            track_building="best_edges", gnn_cut=0.6,
                            join_pieces={"min_score": 0.0, "transverse_mm": 1000.0, "z_mm": 5000.0,
                                         "single_hit_scale": 1.0, "rounds": 3})


def test_pipeline_and_ensemble_join_pieces_by_the_bundle(join_bundle, sample_features):
    config = RuntimeConfig(intra_op_threads=1, graph_threads=1)
    pipeline = Pipeline(join_bundle, config=config)
    join = pipeline.stages.join_pieces
    assert join == JoinSettings(0.0, 1000.0, 5000.0, 1.0, 3)
    result = pipeline.run(sample_features)
    filtered, _ = pipeline.filter_edges(sample_features, pipeline.build_graph(pipeline.embed(sample_features)))
    logits = pipeline.classify_edges("gnn", sample_features, filtered, chunked=False)
    bundle = pipeline.bundle
    order = hit_distances(sample_features, bundle.feature_names, bundle.feature_scales)
    positions = hit_positions(sample_features, bundle.feature_names, bundle.feature_scales)
    assert np.allclose(positions[:, 0], sample_features[:, 0] * 1000.0)
    expected = build_tracks(len(sample_features), filtered, logits, 0.6, method="best_edges", hit_order=order,
                            join=join, positions=positions)
    without = build_tracks(len(sample_features), filtered, logits, 0.6, method="best_edges", hit_order=order)
    np.testing.assert_array_equal(result.labels, expected)
    assert len(np.unique(expected)) < len(np.unique(without))  # pieces were joined
    stages = [make_stage(name, bundle, config) for name in STAGE_NAMES]
    np.testing.assert_array_equal(run_stages(stages, sample_features), result.labels)


def test_bundle_join_pieces_is_validated_and_round_trips(join_bundle, tmp_path):
    stages = load_bundle(join_bundle).stages
    assert StageParameters.from_dict(stages.to_dict()) == stages
    assert stages.to_dict()["join_pieces"] == stages.join_pieces.to_dict()
    for change, message in [
        ({"join_pieces": {"min_score": 2.0}}, r"stages.join_pieces: missing transverse_mm, z_mm"),
        ({"join_pieces": {**stages.join_pieces.to_dict(), "z_mm": -1}}, "stages.join_pieces: z_mm must be above 0"),
        ({"join_pieces": 3}, "stages.join_pieces: expected an object"),
        ({"track_building": "components"},
         "joining track pieces needs track_building 'best_edges', not 'components'"),
    ]:
        assert_stages_refused(join_bundle, tmp_path / f"bad{len(list(tmp_path.iterdir()))}", change, message)
    # joining reads r, phi and z: a bundle whose features lack phi is refused
    bad = tmp_path / "no_phi"
    shutil.copytree(join_bundle, bad)
    data = json.loads((bad / "pipeline.json").read_text())
    data["features"]["names"][1] = "eta"
    (bad / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="join_pieces: joining track pieces fits lines in r, phi and z"):
        load_bundle(bad)


def test_settings_of_another_kind_and_probabilities_beyond_one_are_refused():
    """QA, 2026-12-02: a mapping as settings raised AttributeError; probabilities outside [0, 1]
    (logits given with scores_are_logits=False) were compared with the cut as they were, as
    build_tracks refuses them."""
    labels, edges, scores, positions, order = _two_pieces()
    for settings in (SETTINGS.to_dict(), None):
        with pytest.raises(InputError, match=r"settings must be JoinSettings .*JoinSettings.from_mapping"):
            join_pieces(labels, edges, scores, positions, order, settings)
    with pytest.raises(InputError, match=r"score of edge 0 is 3.0, not a probability in \[0, 1\]"):
        join_pieces(labels, edges, np.full(scores.shape, 3.0), positions, order, SETTINGS, scores_are_logits=False)
    with pytest.raises(InputError, match="scores_are_logits must be True or False; got 'no'"):
        join_pieces(labels, edges, scores, positions, order, SETTINGS, scores_are_logits="no")
