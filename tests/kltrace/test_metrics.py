"""TAP-Vid metrics against a naive per-point reference, query sampling and dataset loading."""

import pickle

import numpy as np
import pytest

from longseq.kltrace.metrics import load_tapvid, sample_queries_first, tapvid_metrics

THRESHOLDS = (1, 2, 4, 8, 16)


def naive_metrics(qp, gt_occ, gt_tr, pr_occ, pr_tr, mode, thresholds=THRESHOLDS):
    """Per-point loop over (video, query, frame); per-video ratios, then mean over videos."""
    per_video = []
    for b in range(gt_occ.shape[0]):
        n_eval = n_agree = n_vis = 0
        dist_sum = 0.0
        correct = dict.fromkeys(thresholds, 0)
        tp = dict.fromkeys(thresholds, 0)
        fp = dict.fromkeys(thresholds, 0)
        for n in range(gt_occ.shape[1]):
            q = int(round(qp[b, n, 0]))
            for t in range(gt_occ.shape[2]):
                if t == q or (mode == "first" and t < q):
                    continue
                n_eval += 1
                n_agree += bool(pr_occ[b, n, t]) == bool(gt_occ[b, n, t])
                dx, dy = pr_tr[b, n, t] - gt_tr[b, n, t]
                dist = (dx * dx + dy * dy) ** 0.5
                gt_vis = not gt_occ[b, n, t]
                pr_vis = not pr_occ[b, n, t]
                if gt_vis:
                    n_vis += 1
                    dist_sum += dist
                for d in thresholds:
                    close = dist < d
                    if gt_vis and close:
                        correct[d] += 1
                        if pr_vis:
                            tp[d] += 1
                    if pr_vis and not (gt_vis and close):
                        fp[d] += 1
        m = {"occlusion_accuracy": n_agree / n_eval, "epe": dist_sum / n_vis}
        for d in thresholds:
            m[f"pts_within_{d}"] = correct[d] / n_vis
            m[f"jaccard_{d}"] = tp[d] / (n_vis + fp[d])
        m["average_jaccard"] = sum(m[f"jaccard_{d}"] for d in thresholds) / len(thresholds)
        m["average_pts_within_thresh"] = sum(m[f"pts_within_{d}"] for d in thresholds) / len(
            thresholds
        )
        per_video.append(m)
    return {k: sum(m[k] for m in per_video) / len(per_video) for k in per_video[0]}


def random_batch(seed, b=3, n=12, t=10, noise=6.0):
    rng = np.random.default_rng(seed)
    gt_tr = rng.uniform(0, 64, size=(b, n, t, 2))
    pr_tr = gt_tr + rng.normal(scale=noise, size=gt_tr.shape)
    gt_occ = rng.random((b, n, t)) < 0.3
    pr_occ = rng.random((b, n, t)) < 0.3
    qf = rng.integers(0, t - 1, size=(b, n))  # leaves at least one frame after the query
    qp = np.stack([qf, rng.uniform(0, 64, (b, n)), rng.uniform(0, 64, (b, n))], axis=-1)
    return qp.astype(float), gt_occ, gt_tr, pr_occ, pr_tr


def metric_keys(thresholds=THRESHOLDS):
    keys = {"occlusion_accuracy", "average_jaccard", "average_pts_within_thresh", "epe"}
    keys |= {f"pts_within_{d}" for d in thresholds} | {f"jaccard_{d}" for d in thresholds}
    return keys


@pytest.mark.parametrize("mode", ["first", "strided"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_on_random_batches(mode, seed):
    args = random_batch(seed)
    got = tapvid_metrics(*args, query_mode=mode)
    want = naive_metrics(*args, mode)
    assert set(got) == metric_keys()
    for key, value in want.items():
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_custom_thresholds_match_reference():
    args = random_batch(7)
    thresholds = (0.5, 3, 10)
    got = tapvid_metrics(*args, query_mode="strided", thresholds=thresholds)
    want = naive_metrics(*args, "strided", thresholds)
    assert set(got) == metric_keys(thresholds)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_batch_is_mean_of_per_video_metrics():
    qp, gt_occ, gt_tr, pr_occ, pr_tr = random_batch(3, b=4)
    batched = tapvid_metrics(qp, gt_occ, gt_tr, pr_occ, pr_tr)
    single = [tapvid_metrics(qp[i], gt_occ[i], gt_tr[i], pr_occ[i], pr_tr[i]) for i in range(4)]
    for key, value in batched.items():
        assert value == pytest.approx(np.mean([s[key] for s in single]), abs=1e-12), key


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_perfect_predictions(mode):
    qp, gt_occ, gt_tr, _, _ = random_batch(4)
    m = tapvid_metrics(qp, gt_occ, gt_tr, gt_occ.copy(), gt_tr.copy(), query_mode=mode)
    assert m["occlusion_accuracy"] == 1.0
    assert m["average_jaccard"] == 1.0
    assert m["average_pts_within_thresh"] == 1.0
    assert m["epe"] == 0.0
    for d in THRESHOLDS:
        assert m[f"pts_within_{d}"] == 1.0
        assert m[f"jaccard_{d}"] == 1.0


@pytest.mark.parametrize("offset", [(3.0, 0.0), (0.0, -3.0), (1.8, 2.4)])
def test_three_pixel_shift(offset):
    qp, gt_occ, gt_tr, _, _ = random_batch(5)
    m = tapvid_metrics(qp, gt_occ, gt_tr, gt_occ, gt_tr + np.array(offset))
    assert m["pts_within_1"] == m["pts_within_2"] == 0.0
    assert m["pts_within_4"] == m["pts_within_8"] == m["pts_within_16"] == 1.0
    assert m["jaccard_1"] == m["jaccard_2"] == 0.0
    assert m["jaccard_4"] == 1.0
    assert m["average_pts_within_thresh"] == pytest.approx(0.6)
    assert m["epe"] == pytest.approx(3.0)


def test_threshold_is_strict():
    qp, gt_occ, gt_tr, _, _ = random_batch(5)
    gt_tr = np.round(gt_tr)  # integer positions make the 4 px offset exact
    m = tapvid_metrics(qp, gt_occ, gt_tr, gt_occ, gt_tr + np.array([4.0, 0.0]))
    assert m["pts_within_4"] == 0.0 and m["pts_within_8"] == 1.0


def test_predicting_everything_occluded_gives_zero_jaccard():
    qp, gt_occ, gt_tr, _, _ = random_batch(6)
    m = tapvid_metrics(qp, gt_occ, gt_tr, np.ones_like(gt_occ), gt_tr)
    assert m["average_jaccard"] == 0.0
    assert all(m[f"jaccard_{d}"] == 0.0 for d in THRESHOLDS)
    # position accuracy ignores predicted occlusion
    assert m["average_pts_within_thresh"] == 1.0
    want = naive_metrics(qp, gt_occ, gt_tr, np.ones_like(gt_occ), gt_tr, "first")
    assert m["occlusion_accuracy"] == pytest.approx(want["occlusion_accuracy"])


def test_first_mode_ignores_frames_up_to_the_query():
    qp, gt_occ, gt_tr, pr_occ, pr_tr = random_batch(8)
    before = tapvid_metrics(qp, gt_occ, gt_tr, pr_occ, pr_tr, query_mode="first")
    t = np.arange(gt_occ.shape[-1])
    at_or_before = t[None, None, :] <= qp[..., 0:1].astype(int)
    rng = np.random.default_rng(0)
    pr_tr2 = np.where(at_or_before[..., None], pr_tr + rng.normal(0, 50, pr_tr.shape), pr_tr)
    pr_occ2 = np.where(at_or_before, ~pr_occ, pr_occ)
    after = tapvid_metrics(qp, gt_occ, gt_tr, pr_occ2, pr_tr2, query_mode="first")
    assert after == before
    # strided mode does evaluate the frames before the query
    strided_before = tapvid_metrics(qp, gt_occ, gt_tr, pr_occ, pr_tr, query_mode="strided")
    strided_after = tapvid_metrics(qp, gt_occ, gt_tr, pr_occ2, pr_tr2, query_mode="strided")
    assert strided_after != strided_before


def test_strided_mode_ignores_only_the_query_frame():
    qp, gt_occ, gt_tr, pr_occ, pr_tr = random_batch(9)
    before = tapvid_metrics(qp, gt_occ, gt_tr, pr_occ, pr_tr, query_mode="strided")
    at_query = np.arange(gt_occ.shape[-1])[None, None, :] == qp[..., 0:1].astype(int)
    pr_tr2 = np.where(at_query[..., None], pr_tr + 100.0, pr_tr)
    pr_occ2 = np.where(at_query, ~pr_occ, pr_occ)
    assert tapvid_metrics(qp, gt_occ, gt_tr, pr_occ2, pr_tr2, query_mode="strided") == before


def test_shape_and_mode_errors():
    qp, gt_occ, gt_tr, pr_occ, pr_tr = random_batch(10)
    with pytest.raises(ValueError, match="query_mode"):
        tapvid_metrics(qp, gt_occ, gt_tr, pr_occ, pr_tr, query_mode="last")
    with pytest.raises(ValueError, match="pred_tracks"):
        tapvid_metrics(qp, gt_occ, gt_tr, pr_occ, pr_tr[..., :-1, :])
    with pytest.raises(ValueError, match="pred_occluded"):
        tapvid_metrics(qp, gt_occ, gt_tr, pr_occ[:, :-1], pr_tr)
    with pytest.raises(ValueError, match="gt_tracks"):
        tapvid_metrics(qp, gt_occ, gt_tr[..., :1], pr_occ, pr_tr)
    with pytest.raises(ValueError, match="query_points"):
        tapvid_metrics(qp[..., :2], gt_occ, gt_tr, pr_occ, pr_tr)
    bad_qp = qp.copy()
    bad_qp[0, 0, 0] = gt_occ.shape[-1]
    with pytest.raises(ValueError, match="query frame"):
        tapvid_metrics(bad_qp, gt_occ, gt_tr, pr_occ, pr_tr)


def test_sample_queries_first():
    rng = np.random.default_rng(11)
    n, t = 20, 8
    gt_tr = rng.uniform(0, 50, (n, t, 2))
    gt_occ = rng.random((n, t)) < 0.5
    gt_occ[3] = True  # never visible
    gt_occ[4] = False  # visible from frame 0
    qp, keep = sample_queries_first(gt_occ, gt_tr)
    assert keep.shape == (n,) and keep.dtype == bool
    assert not keep[3] and keep[4]
    assert np.array_equal(keep, (~gt_occ).any(axis=1))
    kept = np.flatnonzero(keep)
    assert qp.shape == (len(kept), 3)
    for row, i in zip(qp, kept, strict=True):
        first = next(j for j in range(t) if not gt_occ[i, j])
        assert row[0] == first
        assert row[1] == gt_tr[i, first, 1] and row[2] == gt_tr[i, first, 0]  # (t, y, x)
    # querying the ground truth itself at those points is a perfect prediction
    m = tapvid_metrics(qp, gt_occ[keep], gt_tr[keep], gt_occ[keep], gt_tr[keep])
    assert m["average_jaccard"] == 1.0


# ---------------------------------------------------------------------------- loading


def make_entry(rng, t=4, h=24, w=32, n=5):
    return {
        "video": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
        "points": rng.random((n, t, 2)).astype(np.float32),
        "occluded": rng.random((n, t)) < 0.3,
    }


def test_load_npz_and_resize(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    entry = make_entry(rng)
    path = tmp_path / "clip.npz"
    np.savez(path, **entry)

    (out,) = load_tapvid(path)
    assert out["name"] == "clip"
    assert out["video"].dtype == np.uint8
    np.testing.assert_array_equal(out["video"], entry["video"])
    np.testing.assert_allclose(out["tracks"], entry["points"] * np.array([32, 24]), rtol=1e-6)
    assert out["occluded"].dtype == bool
    np.testing.assert_array_equal(out["occluded"], entry["occluded"])

    (small,) = load_tapvid(str(path), resize=(12, 16))
    assert small["video"].shape == (4, 12, 16, 3)
    np.testing.assert_allclose(small["tracks"], entry["points"] * np.array([16, 12]), rtol=1e-6)
    want = cv2.resize(entry["video"][0], (16, 12), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small["video"][0], want)

    (big,) = load_tapvid(path, resize=(48, 40))
    assert big["video"].shape == (4, 48, 40, 3)
    np.testing.assert_allclose(big["tracks"], entry["points"] * np.array([40, 48]), rtol=1e-6)


def test_load_davis_pickle(tmp_path):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    data = {"bear": make_entry(rng, t=3), "car": make_entry(rng, t=5, h=20, w=30, n=2)}
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps(data))

    videos = load_tapvid(path)
    assert [v["name"] for v in videos] == ["bear", "car"]
    for v, src in zip(videos, data.values(), strict=True):
        np.testing.assert_array_equal(v["video"], src["video"])
        h, w = src["video"].shape[1:3]
        np.testing.assert_allclose(v["tracks"], src["points"] * np.array([w, h]), rtol=1e-6)
        np.testing.assert_array_equal(v["occluded"], src["occluded"])

    resized = load_tapvid(path, resize=(16, 16))
    for v, src in zip(resized, data.values(), strict=True):
        assert v["video"].shape[1:] == (16, 16, 3)
        np.testing.assert_allclose(v["tracks"], src["points"] * 16.0, rtol=1e-6)


def test_load_kinetics_pickle_with_jpeg_frames(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    t, h, w = 3, 24, 32
    rgb = np.zeros((t, h, w, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 60, 20  # distinct channels catch BGR/RGB swaps
    rgb[:, :, : w // 2, 1] = 120
    frames = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in rgb]
    entries = [
        {"video": frames, "points": rng.random((4, t, 2)), "occluded": rng.random((4, t)) < 0.5},
        {**make_entry(rng, t=2), "video_id": "abc123"},
    ]
    path = tmp_path / "0000_of_0010.pkl"
    path.write_bytes(pickle.dumps(entries))

    videos = load_tapvid(path)
    assert [v["name"] for v in videos] == ["0000_of_0010_0", "abc123"]
    v = videos[0]
    assert v["video"].shape == (t, h, w, 3) and v["video"].dtype == np.uint8
    assert np.abs(v["video"].astype(int) - rgb.astype(int)).mean() < 4  # JPEG is lossy
    np.testing.assert_allclose(v["tracks"], entries[0]["points"] * np.array([w, h]))

    (v_small, _) = load_tapvid(path, resize=(12, 8))
    assert v_small["video"].shape == (t, 12, 8, 3)
    np.testing.assert_allclose(v_small["tracks"], entries[0]["points"] * np.array([8, 12]))


def test_load_errors(tmp_path):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    missing = tmp_path / "nope.pkl"
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_tapvid(missing)

    entry = make_entry(rng)
    no_occ = tmp_path / "no_occ.npz"
    np.savez(no_occ, video=entry["video"], points=entry["points"])
    with pytest.raises(ValueError, match=r"no_occ\.npz.*'occluded'"):
        load_tapvid(no_occ)

    bad_points = tmp_path / "bad_points.npz"
    np.savez(
        bad_points, video=entry["video"], points=entry["points"][:, :2], occluded=entry["occluded"]
    )
    with pytest.raises(ValueError, match=r"bad_points\.npz.*'points'"):
        load_tapvid(bad_points)

    bad_video = tmp_path / "bad_video.pkl"
    bad_video.write_bytes(pickle.dumps({"x": {**entry, "video": entry["video"][..., 0]}}))
    with pytest.raises(ValueError, match=r"bad_video\.pkl.*'video'"):
        load_tapvid(bad_video)

    bad_jpeg = tmp_path / "bad_jpeg.pkl"
    bad_jpeg.write_bytes(pickle.dumps([{**entry, "video": [b"not a jpeg"] * 4}]))
    with pytest.raises(ValueError, match=r"bad_jpeg\.pkl.*decoded"):
        load_tapvid(bad_jpeg)

    other = tmp_path / "clip.mp4"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported"):
        load_tapvid(other)
