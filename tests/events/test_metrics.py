"""Tests of trackserve.events.metrics: hand-built cases, a loop reference, the real sample event."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from trackserve.errors import EventFormatError, InputError
from trackserve.events.event import Event
from trackserve.events.metrics import (
    align_labels,
    SELECTION_OPTIONS,
    check_selection,
    edge_metrics,
    evaluate_event,
    event_particle_pt,
    found_particles,
    track_metrics,
    trackml_score,
)

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "event000000001"

# --------------------------------------------------------------------------- edges


def test_edge_metrics_hand_case():
    # Truth graph: 0-1, 1-2 (particle 7), 3-4 (particle 8); hit 5 is noise.
    truth = np.array([[0, 1, 3], [1, 2, 4]])
    particle_ids = np.array([7, 7, 7, 8, 8, 0])
    # Predicted: 1-0 reversed and repeated, 0-2 (same particle, not in truth graph),
    # 2-3 (two particles), 4-5 (noise), 3-4.
    pred = np.array([[1, 0, 0, 2, 4, 4], [0, 1, 2, 3, 5, 3]])
    metrics = edge_metrics(pred, truth, particle_ids)
    # Unique undirected predicted edges: 0-1, 0-2, 2-3, 4-5, 3-4 -> 5; in truth: 0-1, 3-4.
    assert metrics.num_pred_edges == 5
    assert metrics.num_truth_edges == 3
    assert metrics.num_true_pred_edges == 2
    assert metrics.efficiency == pytest.approx(2 / 3)
    assert metrics.truth_purity == pytest.approx(2 / 5)
    # Same non-noise particle: 0-1, 0-2, 3-4 -> 3 of 5.
    assert metrics.particle_purity == pytest.approx(3 / 5)
    assert metrics.purity == metrics.particle_purity
    without = edge_metrics(pred, truth)
    assert without.particle_purity is None and without.purity == pytest.approx(2 / 5)


def test_edge_metrics_noise_pair_is_impure():
    metrics = edge_metrics(np.array([[0], [1]]), np.zeros((2, 0), np.int64), np.array([0, 0]))
    assert metrics.particle_purity == 0.0
    assert math.isnan(metrics.efficiency)


def test_edge_metrics_empty_prediction():
    metrics = edge_metrics(np.zeros((2, 0), np.int64), np.array([[0], [1]]), np.array([1, 1]))
    assert metrics.efficiency == 0.0
    assert math.isnan(metrics.purity) and math.isnan(metrics.truth_purity)


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        (np.array([[0, 2], [1, 2]]), "self-loop"),
        (np.array([0, 1]), r"shape \[2, M\]"),
        (np.array([[0.0], [1.0]]), "integer"),
        (np.array([[-1], [1]]), "outside"),
        (np.array([[0], [9]]), "particle_ids has only 3"),
    ],
)
def test_edge_metrics_rejects_bad_edges(pred, message):
    with pytest.raises(InputError, match=message):
        edge_metrics(pred, np.array([[0], [1]]), np.array([1, 1, 1]))


def test_edge_metrics_matches_set_reference():
    rng = np.random.default_rng(3)
    n = 300
    particle_ids = rng.integers(0, 40, n)
    truth = rng.integers(0, n, (2, 800))
    pred = rng.integers(0, n, (2, 2000))
    pred[:, :500] = truth[::-1, :500]  # many found, reversed
    truth = truth[:, truth[0] != truth[1]]
    pred = pred[:, pred[0] != pred[1]]
    t = {frozenset(e) for e in truth.T.tolist()}
    p = {frozenset(e) for e in pred.T.tolist()}
    same = sum(1 for e in p if len({int(particle_ids[i]) for i in e}) == 1 and particle_ids[min(e)] != 0)
    metrics = edge_metrics(pred, truth, particle_ids)
    assert metrics.num_pred_edges == len(p) and metrics.num_truth_edges == len(t)
    assert metrics.efficiency == pytest.approx(len(p & t) / len(t))
    assert metrics.truth_purity == pytest.approx(len(p & t) / len(p))
    assert metrics.particle_purity == pytest.approx(same / len(p))


# --------------------------------------------------------------------------- tracks, by hand

# Hits 0-3: particle A=11 (4 hits); 4-9: B=22 (6 hits); 10-13: C=33 (4 hits); 14-16 noise.
HAND_PIDS = np.array([11] * 4 + [22] * 6 + [33] * 4 + [0] * 3)
# T1 = A exactly; T2, T3 = the two halves of B; T4 = three hits of C and a noise hit;
# T5 = the last hit of C and two noise hits.
HAND_LABELS = np.array([1] * 4 + [2] * 3 + [3] * 3 + [4] * 3 + [5] + [4] + [5] * 2)
HAND_WEIGHTS = np.array([0.1] * 4 + [0.05] * 6 + [0.075] * 4 + [0.0] * 3)
HAND_PT = (np.array([33, 22, 11]), np.array([1.5, 0.5, 2.0]))


def test_track_metrics_hand_case_noise_excluded():
    m = track_metrics(HAND_PIDS, HAND_LABELS, min_hits=3)
    # Noise removed: T5 keeps one hit and is no candidate; T1-T4 are.
    assert (m.num_particles, m.num_reconstructable, m.num_tracks, m.num_candidate_tracks) == (3, 3, 5, 4)
    # A found by T1, C by T4 (3/3 of the track, 3/4 of C); B's halves hold exactly half: not found.
    assert m.num_matched == 2 and m.efficiency == pytest.approx(2 / 3)
    # Every candidate is pure: no fake. B's second half-track is a duplicate.
    assert (m.num_matched_tracks, m.num_fake_tracks, m.fake_rate) == (4, 0, 0.0)
    assert m.num_duplicate_tracks == 1 and m.duplicate_rate == pytest.approx(1 / 4)


def test_found_particles_hand_case():
    ids, sizes, found = found_particles(HAND_PIDS, HAND_LABELS, min_track_hits=3)
    # A (4 hits) found by T1, B (6) split in halves: not found, C (4) found by T4
    assert ids.tolist() == [11, 22, 33] and sizes.tolist() == [4, 6, 4] and found.tolist() == [True, False, True]
    # with candidates of at least 4 hits T4 (3 hits without noise) no longer finds C
    assert found_particles(HAND_PIDS, HAND_LABELS, min_track_hits=4)[2].tolist() == [True, False, False]
    empty = found_particles(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert [part.size for part in empty] == [0, 0, 0]
    with pytest.raises(InputError, match="17 hits but labels has 3"):
        found_particles(HAND_PIDS, np.arange(3))
    for count in (-1, 2.5, None, True):  # checked as track_metrics checks it (2.5 was cut to 2, None crashed)
        with pytest.raises(InputError, match="min_track_hits must be a whole number of hits >= 0"):
            found_particles(HAND_PIDS, HAND_LABELS, min_track_hits=count)


@pytest.mark.parametrize("min_pt", [-0.5, float("nan"), float("inf"), True, "1"])
def test_a_selection_with_an_impossible_pt_is_refused(min_pt):
    with pytest.raises(InputError, match=r"min_pt must be a finite transverse momentum >= 0 GeV"):
        track_metrics(HAND_PIDS, HAND_LABELS, min_pt=min_pt, particle_pt=(np.array([11, 22, 33]), np.ones(3)))


@pytest.mark.parametrize("counts", [{"min_hits": -1}, {"min_hits": 2.5}, {"min_track_hits": -1},
                                    {"min_track_hits": True}])
def test_a_selection_with_an_impossible_hit_count_is_refused(counts):
    name = next(iter(counts))
    with pytest.raises(InputError, match=rf"{name} must be a whole number of hits >= 0"):
        track_metrics(HAND_PIDS, HAND_LABELS, **counts)


def test_a_whole_hit_count_given_as_a_float_is_refused_saying_to_give_the_int():
    with pytest.raises(InputError, match=r"min_hits must be a whole number of hits >= 0 \(an int\), got 5.0: give it as "
                                         r"the int 5"):
        track_metrics(HAND_PIDS, HAND_LABELS, min_hits=5.0)


def test_check_selection_accepts_numpy_scalars_and_names_the_options():
    check_selection(np.float32(1.0), np.int64(5), None)
    check_selection(0, 0, 0)
    with pytest.raises(InputError, match=r"^--min-hits must be a whole number"):
        check_selection(1.0, -3, names=SELECTION_OPTIONS)


def test_track_metrics_hand_case_noise_kept():
    m = track_metrics(HAND_PIDS, HAND_LABELS, min_hits=3, exclude_noise=False)
    # T4 is 3 C + 1 noise: still matched. T5 is 2 noise + 1 C: a fake.
    assert (m.num_tracks, m.num_candidate_tracks, m.num_matched_tracks, m.num_fake_tracks) == (5, 5, 4, 1)
    assert m.efficiency == pytest.approx(2 / 3)
    assert m.fake_rate == pytest.approx(1 / 5)
    assert m.duplicate_rate == pytest.approx(1 / 5)


def test_track_metrics_pt_selection():
    m = track_metrics(HAND_PIDS, HAND_LABELS, particle_pt=HAND_PT, min_pt=1.0, min_hits=3)
    # B (0.5 GeV) is not reconstructable: efficiency over A and C, and B's split is no duplicate;
    # B's tracks are matched to a particle, so they are not fakes either.
    assert (m.num_reconstructable, m.num_matched, m.efficiency) == (2, 2, 1.0)
    assert (m.num_duplicate_tracks, m.num_fake_tracks) == (0, 0)


def test_track_metrics_min_hits_selection():
    # min_hits=5: only B (6 hits) is reconstructable; tracks of >= 3 hits stay candidates.
    m = track_metrics(HAND_PIDS, HAND_LABELS, min_hits=5, min_track_hits=3)
    assert (m.num_reconstructable, m.num_matched, m.efficiency) == (1, 0, 0.0)
    assert (m.num_candidate_tracks, m.num_duplicate_tracks) == (4, 1)
    # The default candidate threshold is min_hits: no track has 5 hits, so rates are undefined.
    d = track_metrics(HAND_PIDS, HAND_LABELS, min_hits=5)
    assert d.min_track_hits == 5 and d.num_candidate_tracks == 0
    assert math.isnan(d.fake_rate) and math.isnan(d.duplicate_rate)


def test_track_metrics_tie_is_fake_and_unmatched():
    # One track of 2 A hits + 2 B hits: no particle holds more than half of it.
    pids = np.array([1, 1, 2, 2])
    m = track_metrics(pids, np.zeros(4, np.int64), min_hits=2)
    assert (m.num_matched, m.num_matched_tracks, m.num_fake_tracks) == (0, 0, 1)
    # 3 of 4 hits of particle 1 with one of particle 2: matched and found.
    m = track_metrics(np.array([1, 1, 1, 2]), np.zeros(4, np.int64), min_hits=1)
    assert (m.num_matched, m.num_reconstructable, m.num_matched_tracks) == (1, 2, 1)


def test_track_metrics_fake_track_of_noise_hits():
    pids = np.array([5, 5, 5, 0, 0, 0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    kept = track_metrics(pids, labels, min_hits=3, exclude_noise=False)
    assert (kept.num_candidate_tracks, kept.num_fake_tracks, kept.efficiency) == (2, 1, 1.0)
    dropped = track_metrics(pids, labels, min_hits=3)
    assert (dropped.num_tracks, dropped.num_candidate_tracks, dropped.num_fake_tracks) == (1, 1, 0)


def test_track_metrics_empty_and_single_hit():
    empty = track_metrics(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert (empty.num_particles, empty.num_tracks) == (0, 0)
    assert math.isnan(empty.efficiency) and math.isnan(empty.fake_rate)
    one = track_metrics(np.array([9]), np.array([4]), min_hits=1)
    assert (one.efficiency, one.fake_rate, one.duplicate_rate) == (1.0, 0.0, 0.0)


def test_track_metrics_input_errors():
    with pytest.raises(InputError, match="needs particle_pt"):
        track_metrics(HAND_PIDS, HAND_LABELS, min_pt=1.0)
    with pytest.raises(InputError, match="no pT for particle"):
        track_metrics(HAND_PIDS, HAND_LABELS, min_pt=1.0, particle_pt=(np.array([11, 22]), np.array([1.0, 1.0])))
    with pytest.raises(InputError, match="17 hits but labels has 3"):
        track_metrics(HAND_PIDS, np.arange(3))
    # a mapping of pT by id was unpacked as its keys ("ids must be a 1-D array, got shape ()")
    with pytest.raises(InputError, match="particle_pt must be a pair .* not a dict"):
        track_metrics(HAND_PIDS, HAND_LABELS, min_pt=1.0, particle_pt={11: 2.0, 22: 0.5, 33: 1.5})
    with pytest.raises(InputError, match="integers"):
        track_metrics(HAND_PIDS, HAND_LABELS.astype(float))


def test_trackml_score_hand_case():
    truth = {"hit_id": np.arange(1, 18), "particle_id": HAND_PIDS, "weight": HAND_WEIGHTS}
    # T1 scores A (0.4); B's halves hold exactly half of B: 0; T4 scores three C hits
    # (3 x 0.075); T5's majority is noise: 0. Total weight 1.
    assert trackml_score(np.arange(1, 18), HAND_LABELS, truth) == pytest.approx(0.4 + 0.225)
    # The submission's row order does not matter; the score is normalised by the total weight.
    order = np.random.default_rng(0).permutation(17)
    doubled = dict(truth, weight=2 * HAND_WEIGHTS)
    assert trackml_score(np.arange(1, 18)[order], HAND_LABELS[order], doubled) == pytest.approx(0.625)


def test_trackml_score_noise_track_scores_nothing_even_with_weight():
    truth = {"hit_id": np.arange(4), "particle_id": np.array([0, 0, 0, 1]), "weight": np.full(4, 0.25)}
    assert trackml_score(np.arange(4), np.array([0, 0, 0, 1]), truth) == pytest.approx(0.25)


def test_trackml_score_bad_weights():
    truth = {"hit_id": np.arange(2), "particle_id": np.array([1, 1]), "weight": np.array([0.5, -1.0])}
    with pytest.raises(EventFormatError, match="column 'weight', row 2"):
        trackml_score(np.arange(2), np.zeros(2, np.int64), truth)
    with pytest.raises(EventFormatError, match="no 'weight' column"):
        trackml_score(np.arange(2), np.zeros(2, np.int64), {"hit_id": np.arange(2), "particle_id": np.ones(2)})


# --------------------------------------------------------------------------- loop reference


def _reference(pids, labels, weights, pt, min_pt, min_hits, min_track_hits, exclude_noise):
    """A slow, direct implementation of the documented definitions."""
    pids, labels = pids.tolist(), labels.tolist()
    particle_hits = Counter(p for p in pids)
    tracks = defaultdict(list)
    for i, (p, t) in enumerate(zip(pids, labels)):
        if exclude_noise and p == 0:
            continue
        tracks[t].append(i)
    reconstructable = {
        p for p, n in particle_hits.items() if p != 0 and n >= min_hits and (min_pt <= 0 or pt[p] >= min_pt)
    }
    found, matched_tracks, per_particle = set(), 0, Counter()
    candidates = 0
    for hits in tracks.values():
        if len(hits) < min_track_hits:
            continue
        candidates += 1
        counts = Counter(pids[i] for i in hits)
        for p, n in counts.items():
            if p != 0 and n / len(hits) > 0.5:
                matched_tracks += 1
                if p in reconstructable:
                    per_particle[p] += 1
                if n / particle_hits[p] > 0.5:
                    found.add(p)
    # TrackML score: every hit, noise included, official majority rule.
    all_tracks = defaultdict(list)
    for i, t in enumerate(labels):
        all_tracks[t].append(i)
    score = 0.0
    for hits in all_tracks.values():
        counts = Counter(pids[i] for i in hits)
        major, n = max(sorted(counts.items()), key=lambda item: item[1])
        if major != 0 and n / len(hits) > 0.5 and n / particle_hits[major] > 0.5:
            score += sum(weights[i] for i in hits if pids[i] == major)
    nan = float("nan")
    return {
        "num_particles": sum(1 for p in particle_hits if p != 0),
        "num_reconstructable": len(reconstructable),
        "num_matched": len(found & reconstructable),
        "num_tracks": len(tracks),
        "num_candidate_tracks": candidates,
        "num_matched_tracks": matched_tracks,
        "num_duplicate_tracks": sum(k - 1 for k in per_particle.values()),
        "efficiency": len(found & reconstructable) / len(reconstructable) if reconstructable else nan,
        "fake_rate": (candidates - matched_tracks) / candidates if candidates else nan,
        "score": score / sum(weights) if sum(weights) else nan,
        "found": found,
    }


def _random_labelling(rng, num_hits):
    """Truth with noise and a labelling that mostly follows it, with splits, merges and strays."""
    num_particles = max(1, num_hits // 8)
    pids = rng.integers(1, num_particles + 1, num_hits) * 1000 + 7
    pids[rng.random(num_hits) < 0.15] = 0
    _, labels = np.unique(pids, return_inverse=True)
    labels = labels.astype(np.int64)
    split = rng.random(num_hits) < 0.2
    labels[split] += 10 * num_hits  # split particles in two
    stray = rng.random(num_hits) < 0.15
    labels[stray] = rng.integers(0, max(2, num_hits // 10), int(stray.sum()))  # merges and junk
    labels[pids == 0] = np.where(rng.random(int((pids == 0).sum())) < 0.5, -np.arange((pids == 0).sum()) - 1,
                                 labels[pids == 0])
    weights = rng.random(num_hits) * (pids != 0)
    return pids, labels, weights


@pytest.mark.parametrize("seed", range(12))
def test_track_metrics_match_loop_reference(seed):
    rng = np.random.default_rng(seed)
    num_hits = [0, 1, 2, 7, 60, 500, 3000, 20000][seed % 8] if seed < 8 else int(rng.integers(10, 2000))
    pids, labels, weights = _random_labelling(rng, num_hits)
    ids = np.unique(pids[pids != 0])
    pt_values = rng.random(ids.size) * 3
    pt = dict(zip(ids.tolist(), pt_values.tolist()))
    min_pt = float(rng.choice([0.0, 1.0]))
    min_hits = int(rng.integers(1, 7))
    min_track_hits = None if seed % 3 else int(rng.integers(1, 5))
    exclude_noise = bool(seed % 2)
    m = track_metrics(
        pids, labels, particle_pt=(ids, pt_values), min_pt=min_pt, min_hits=min_hits,
        min_track_hits=min_track_hits, exclude_noise=exclude_noise,
    )
    ref = _reference(pids, labels, weights, pt, min_pt, min_hits,
                     min_hits if min_track_hits is None else min_track_hits, exclude_noise)
    particle_ids, sizes, found = found_particles(
        pids, labels, min_track_hits=min_hits if min_track_hits is None else min_track_hits, exclude_noise=exclude_noise)
    assert set(particle_ids[found].tolist()) == ref.pop("found")
    assert particle_ids.tolist() == sorted(set(pids.tolist()) - {0})
    assert sizes.tolist() == [int(np.count_nonzero(pids == p)) for p in particle_ids]
    for name, value in ref.items():
        got = trackml_score(np.arange(num_hits), labels, {"hit_id": np.arange(num_hits), "particle_id": pids,
                                                           "weight": weights}) if name == "score" else getattr(m, name)
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got), name
        else:
            assert got == pytest.approx(value, rel=1e-12), name
    if num_hits:
        assert m.num_fake_tracks == m.num_candidate_tracks - m.num_matched_tracks


# --------------------------------------------------------------------------- alignment and events


def test_align_labels_reorders_and_reports_every_problem():
    labels = align_labels(np.array([5, 3, 9]), np.array([9, 5, 3]), np.array([90, 50, 30]))
    assert labels.tolist() == [50, 30, 90]
    with pytest.raises(EventFormatError) as info:
        align_labels(np.array([5, 3, 9, 11]), np.array([9, 5, 5, 42, 43]), np.arange(5), source="sub.csv")
    message = str(info.value)
    assert message.startswith("file sub.csv: ")
    assert "1 hit id(s) labelled more than once: 5" in message
    assert "2 hit id(s) not in the event: 42, 43" in message
    assert "2 hit(s) of the event not labelled: 3, 11" in message
    with pytest.raises(EventFormatError, match="3 hit ids but 2 track ids"):
        align_labels(np.arange(3), np.arange(3), np.arange(2))


def _hand_event(with_particles=True):
    n = HAND_PIDS.size
    # Hit ids descending, so that no alignment can rely on sorted ids.
    hits = {"hit_id": np.arange(n, 0, -1) * 10, "x": np.zeros(n), "y": np.zeros(n), "z": np.zeros(n)}
    radius = np.tile(np.arange(1.0, 7.0), 3)[:n]
    truth = {
        "hit_id": hits["hit_id"],
        "particle_id": HAND_PIDS,
        "tx": radius, "ty": np.zeros(n), "tz": np.zeros(n),
        "tpx": radius * 0.1, "tpy": np.full(n, 0.0), "tpz": np.zeros(n),
        "weight": HAND_WEIGHTS,
    }
    particles = None
    if with_particles:
        particles = {"particle_id": HAND_PT[0], "px": HAND_PT[1], "py": np.zeros(3)}
    return Event(event_id=7, hits=hits, truth=truth, particles=particles, source="hand/event000000007")


def test_event_particle_pt_from_table_and_first_hit():
    ids, pt = event_particle_pt(_hand_event())
    assert ids.tolist() == [11, 22, 33] and pt.tolist() == [2.0, 0.5, 1.5]
    ids, pt = event_particle_pt(_hand_event(with_particles=False))
    # Without a particles table: tpx at the hit nearest the origin; A's hits lie at r = 1..4,
    # B's at 5, 6, 1, 2, 3, 4 and C's at 5, 6, 1, 2: each takes 0.1 x its smallest radius.
    assert ids.tolist() == [11, 22, 33] and pt == pytest.approx([0.1, 0.1, 0.1])


def test_evaluate_event_hand_case_in_any_row_order():
    event = _hand_event()
    order = np.random.default_rng(1).permutation(HAND_PIDS.size)
    result = evaluate_event(event, event.hits["hit_id"][order], HAND_LABELS[order], min_hits=3, min_pt=1.0)
    assert result["event_id"] == 7 and result["num_hits"] == 17 and result["num_noise_hits"] == 3
    assert (result["efficiency"], result["num_reconstructable"], result["fake_rate"]) == (1.0, 2, 0.0)
    assert result["trackml_score"] == pytest.approx(0.625)


def test_evaluate_event_needs_truth():
    event = _hand_event()
    event.truth = None
    with pytest.raises(EventFormatError, match="evaluation needs the event's truth file"):
        evaluate_event(event, event.hits["hit_id"], HAND_LABELS)


def test_evaluate_event_names_bad_hits():
    event = _hand_event()
    with pytest.raises(EventFormatError, match=r"file labels.csv: 1 hit id\(s\) not in the event: 999.*not labelled: 10"):
        evaluate_event(event, np.append(event.hits["hit_id"][:-1], 999), HAND_LABELS, source="labels.csv")


# --------------------------------------------------------------------------- the real sample event


def _perfect_labels(particle_ids):
    """Particle ids renumbered 0.., each noise hit its own singleton track."""
    _, labels = np.unique(particle_ids, return_inverse=True)
    noise = particle_ids == 0
    labels = labels.astype(np.int64) + 1
    labels[noise] = -np.arange(1, noise.sum() + 1)
    return labels


@pytest.fixture(scope="module")
def sample_event():
    if not SAMPLE.with_name(SAMPLE.name + "-truth.csv.gz").exists():
        pytest.skip(f"the sample event {SAMPLE} is absent")
    from trackserve.events.trackml import read_event

    return read_event(SAMPLE)


@pytest.mark.parametrize("exclude_noise", [True, False])
def test_perfect_labelling_of_sample_event(sample_event, exclude_noise):
    labels = _perfect_labels(sample_event.truth["particle_id"])
    result = evaluate_event(sample_event, sample_event.hits["hit_id"], labels, min_pt=0.5, exclude_noise=exclude_noise)
    assert result["num_hits"] == 5527 and result["num_noise_hits"] == 829 and result["num_particles"] == 468
    assert 0 < result["num_reconstructable"] < 468
    assert (result["efficiency"], result["fake_rate"], result["duplicate_rate"]) == (1.0, 0.0, 0.0)
    assert result["trackml_score"] == 1.0  # exactly: the weight sums are exactly rounded


def test_all_in_one_track_of_sample_event(sample_event):
    hit_ids = sample_event.hits["hit_id"]
    result = evaluate_event(sample_event, hit_ids, np.zeros(hit_ids.size, np.int64))
    assert (result["efficiency"], result["fake_rate"], result["trackml_score"]) == (0.0, 1.0, 0.0)


def test_evaluate_event_with_truth_rows_in_another_order():
    event = _hand_event()
    order = np.random.default_rng(2).permutation(HAND_PIDS.size)
    reference = evaluate_event(event, event.hits["hit_id"], HAND_LABELS, min_hits=3)
    event.truth = {name: column[order] for name, column in event.truth.items()}
    assert evaluate_event(event, event.hits["hit_id"], HAND_LABELS, min_hits=3) == reference
    event.truth = {name: column[1:] for name, column in event.truth.items()}
    with pytest.raises(EventFormatError, match=r"exactly one row per hit: 1 hit\(s\) without truth"):
        evaluate_event(event, event.hits["hit_id"], HAND_LABELS)


def test_evaluate_event_needs_weights():
    event = _hand_event()
    del event.truth["weight"]
    with pytest.raises(EventFormatError, match="column 'weight': the truth table has no 'weight' column"):
        evaluate_event(event, event.hits["hit_id"], HAND_LABELS)


def test_particle_values_look_up_an_unsorted_table_and_name_the_missing():
    from trackserve.events.metrics import particle_values

    table_ids = np.array([40, 7, 19, 3])
    values = np.array([4.0, 0.7, 1.9, 0.3])
    wanted = np.array([19, 3, 19, 40, 7, 7])
    assert particle_values(wanted, table_ids, values, "t", "x").tolist() == [1.9, 0.3, 1.9, 4.0, 0.7, 0.7]
    assert particle_values(np.zeros(0, dtype=np.int64), table_ids, values, "t", "x").shape == (0,)
    with pytest.raises(InputError, match=r"the table has no vz for particle\(s\) 5, 99 of the truth"):
        particle_values(np.array([3, 5, 99]), table_ids, values, "the table", "vz")
    with pytest.raises(InputError, match="has no vz for particle"):
        particle_values(np.array([1]), np.zeros(0, dtype=np.int64), np.zeros(0), "the table", "vz")


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_a_nan_or_negative_pt_is_refused(bad):
    # a NaN pT made every particle unreconstructable: efficiency NaN without a word
    pt = (np.array([11, 22, 33]), np.array([2.0, bad, 3.0]))
    with pytest.raises(InputError, match="particle_pt: the pT of particle 22 is"):
        track_metrics(HAND_PIDS, HAND_LABELS, min_pt=1.0, particle_pt=pt)


def test_evaluate_event_checks_the_selection_and_the_event_first(tmp_path):
    from trackserve.events.metrics import evaluate_event

    for min_pt in ("1", None):
        with pytest.raises(InputError, match="min_pt must be a finite transverse momentum"):
            evaluate_event(None, [1], [0], min_pt=min_pt)
    with pytest.raises(InputError, match="event must be an Event .* got NoneType"):
        evaluate_event(None, [1], [0], min_pt=1.0)


def test_trackml_score_names_an_event_or_a_non_table_given_as_truth():
    truth = {"hit_id": np.arange(1, 18), "particle_id": HAND_PIDS, "weight": HAND_WEIGHTS}
    event = Event(1, {"hit_id": truth["hit_id"]}, truth, {}, {})
    with pytest.raises(InputError, match=r"truth must be the event's truth table \(event.truth\), got the Event itself"):
        trackml_score(np.arange(1, 18), HAND_LABELS, event)
    with pytest.raises(InputError, match="truth must be a table of columns .* with hit_id, particle_id, weight; got "
                                         "NoneType"):
        trackml_score(np.arange(1, 18), HAND_LABELS, None)


def test_truth_columns_of_different_lengths_are_named():
    # was numpy's IndexError (a boolean index of another length) or a broadcast ValueError
    truth = {"hit_id": np.arange(1, 8), "particle_id": np.array([1, 1, 1, 2, 2, 2, 0]), "weight": np.ones(3)}
    with pytest.raises(EventFormatError, match=r"column 'weight': the truth table's 'weight' column has shape \[3\], "
                                               r"its 'hit_id' column \[7\]"):
        trackml_score(np.arange(1, 8), np.array([0, 0, 0, 1, 1, 1, 2]), truth)


def test_a_particle_given_two_pts_is_refused():
    # was accepted: whether the particle counted depended on which of its two pT the lookup met
    with pytest.raises(InputError, match="particle_pt: particle\\(s\\) 1 are given different pT"):
        track_metrics(np.array([1, 1, 1, 2, 2, 2, 0]), np.array([0, 0, 0, 1, 1, 1, 2]), min_pt=1.0, min_hits=3,
                      particle_pt=(np.array([1, 1, 2]), np.array([2.0, 0.1, 3.0])))
    # one pT per hit, repeated alike: well defined, as before
    pids = np.array([1, 1, 1, 2, 2, 2, 0])
    figures = track_metrics(pids, np.array([0, 0, 0, 1, 1, 1, 2]), min_pt=1.0, min_hits=3,
                            particle_pt=(pids[:6], np.array([2.0, 2.0, 2.0, 0.1, 0.1, 0.1])))
    assert figures.efficiency == 1.0
