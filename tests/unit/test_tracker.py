"""Tracker on synthetic box sequences; TrackStore on a real Redis with concurrent updaters."""
from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import redis

from faec_rec.workers.tracker import Observation, Tracker, TrackStore, iou_matrix

FPS = 10.0
T0 = 1_700_000_000.0


def obs(x: float, y: float = 100.0, size: float = 80.0, person: str | None = None, score: float = 0.3) -> Observation:
    """A face box of side ``size`` at top-left (x, y); ``person`` set means a known decision."""
    known = person is not None
    return Observation(
        box=(x, y, x + size, y + size),
        person_id=person,
        person=person.title() if person else None,
        score=0.8 if known else score,
        decision="known" if known else "unknown",
        model_version="v1",
    )


def walk(tracker: Tracker, frames: list[list[Observation]], start: int = 0) -> list:
    events = []
    for i, observations in enumerate(frames, start=start):
        events.extend(tracker.update(i, T0 + i / FPS, observations))
    return events


def types(events) -> list[tuple[str, int]]:
    return [(e.type, e.track_id) for e in events]


# BlazeFace boxes (x1, y1, x2, y2) in the Hamilton clip
# (face_recognition__short_hamilton_clip.mp4) sampled at 5 fps, as the pipeline
# sees them (JPEG q85, RGB): person A in frames 0-3, two one-frame detections
# (9, 11), person B in 14-35 moving their head fast, then a scene cut at 36
# to four people. Recorded once from the real detector; the clip has 6 tracks.
HAMILTON_5FPS_BOXES: list[list[tuple[int, int, int, int]]] = [
    [(518, 54, 561, 97)],
    [(522, 51, 564, 94)],
    [(519, 55, 560, 96)],
    [(517, 57, 560, 99)],
    [],
    [],
    [],
    [],
    [],
    [(449, 147, 518, 216)],
    [],
    [(192, 97, 253, 159)],
    [],
    [],
    [(136, 64, 235, 163)],
    [(157, 71, 257, 170)],
    [(181, 77, 272, 168)],
    [(200, 91, 288, 179)],
    [(209, 84, 292, 166)],
    [(206, 98, 294, 187)],
    [(190, 51, 280, 141)],
    [(191, 49, 275, 133)],
    [(181, 38, 253, 110)],
    [(149, 46, 246, 143)],
    [(163, 25, 259, 121)],
    [(201, 35, 300, 134)],
    [(238, 45, 338, 144)],
    [(238, 42, 335, 139)],
    [(213, 53, 313, 153)],
    [(199, 71, 297, 169)],
    [(193, 48, 291, 146)],
    [(200, 34, 292, 127)],
    [(218, 38, 313, 133)],
    [(240, 49, 342, 151)],
    [(255, 41, 353, 139)],
    [(260, 48, 356, 143)],
    [(361, 97, 438, 173), (308, 59, 368, 120), (149, 100, 219, 170), (33, 71, 98, 135)],
    [(362, 98, 435, 171), (308, 60, 367, 119), (146, 99, 218, 171)],
    [(363, 99, 439, 175), (310, 61, 368, 119), (147, 100, 221, 174), (44, 72, 106, 134)],
    [(364, 102, 438, 176), (312, 63, 370, 121), (147, 103, 219, 174), (48, 69, 109, 130)],
    [(368, 101, 438, 171), (313, 61, 371, 119), (148, 100, 222, 174)],
    [(375, 105, 441, 171), (151, 101, 224, 173), (313, 61, 377, 125), (36, 65, 99, 128)],
    [(375, 106, 441, 171), (317, 62, 382, 127), (154, 101, 226, 173), (31, 71, 91, 131)],
    [(373, 104, 442, 174), (316, 63, 381, 128)],
    [(319, 64, 378, 123), (370, 101, 446, 177), (152, 103, 222, 172)],
    [(318, 64, 379, 126), (374, 102, 443, 171), (36, 74, 96, 135)],
]


def test_real_detections_of_a_music_clip_give_its_six_person_tracks() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=2.0, switch_frames=2, min_hits=2)
    events = []
    for i, boxes in enumerate(HAMILTON_5FPS_BOXES):
        faces = [Observation(box=b, person_id=None, person=None, score=0.1, decision="unknown") for b in boxes]
        events.extend(tracker.update(i, T0 + i / 5.0, faces))
    events.extend(tracker.sweep(T0 + 60))
    arrived = [e for e in events if e.type == "arrived"]
    left = [e for e in events if e.type == "left"]
    # A (0-3), B (14-35, despite head jumps with IoU ~0.25), four people after the cut;
    # the two one-frame detections stay silent
    assert [e.frame for e in arrived] == [1, 15, 37, 37, 37, 38]
    assert sorted(e.track_id for e in left) == sorted(e.track_id for e in arrived)
    b_track = next(e for e in left if e.track_id == arrived[1].track_id)
    assert b_track.frame == 35


def test_iou_matrix_matches_hand_computed_values() -> None:
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=float)
    got = iou_matrix(a, b)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got[0], [50 / 150, 1.0, 0.0])
    np.testing.assert_allclose(got[1], [0.0, 0.0, 0.0])
    # degenerate (zero-area) boxes give 0, not NaN
    assert iou_matrix(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0.0


def test_person_walking_across_gives_one_arrival_and_one_left() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0)
    # 30 frames, 8 px per frame across a 640 px frame, the same stranger throughout
    frames = [[obs(10 + 8 * i)] for i in range(30)]
    events = walk(tracker, frames)
    assert types(events) == [("arrived", 1)]
    # by default a track arrives when seen a second time (min_hits=2)
    assert events[0].frame == 1 and events[0].decision == "unknown"
    # the scene then stays empty: the track leaves once the timeout has passed
    events = walk(tracker, [[] for _ in range(15)], start=30)
    assert types(events) == [("left", 1)]
    left = events[0]
    assert left.frame == 29  # the last frame it was seen in
    assert left.t == pytest.approx(T0 + 2.9)
    assert left.box == [10 + 8 * 29, 100.0, 10 + 8 * 29 + 80, 180.0]
    assert tracker.tracks == []


def test_a_face_seen_in_one_frame_only_never_arrives_nor_leaves() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0, min_hits=2)
    # a one-frame false detection at frame 3 among a real walker
    frames = [[obs(100 + 4 * i)] + ([obs(500, 300)] if i == 3 else []) for i in range(8)]
    events = walk(tracker, frames)
    events += walk(tracker, [[] for _ in range(15)], start=8)
    assert types(events) == [("arrived", 1), ("left", 1)]
    assert tracker.next_id == 3  # the blip had a track, silently dropped


def test_arrival_carries_the_identity_settled_before_it() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0, min_hits=3, switch_frames=2)
    events = walk(tracker, [[obs(100, person=p)] for p in (None, "judy", "judy", "judy")])
    # confirmed at frame 2, when "judy" had already been seen twice: no separate update
    assert types(events) == [("arrived", 1)]
    assert events[0].frame == 2 and events[0].person_id == "judy" and events[0].decision == "known"


def test_two_people_give_two_tracks_that_keep_their_identity_while_crossing() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0)
    frames = []
    for i in range(20):
        # alice walks right, bob walks left, on nearly the same line: they cross at i ~ 10
        frames.append([obs(100 + 20 * i, 100, person="alice"), obs(500 - 20 * i, 104, person="bob")])
    events = walk(tracker, frames)
    assert sorted(types(events)) == [("arrived", 1), ("arrived", 2)]
    by_id = {e.track_id: e.person_id for e in events}
    assert set(by_id.values()) == {"alice", "bob"}
    # after the crossing each track still holds the person it started with
    for track in tracker.tracks:
        assert track.person_id == by_id[track.track_id]
        assert track.hits == 20


def test_identity_change_needs_evidence_and_gives_one_update() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0, switch_frames=2)
    seq = [None, None, None, "carol", None, "carol", "carol", "carol"]
    frames = [[obs(100 + 2 * i, person=p)] for i, p in enumerate(seq)]
    events = walk(tracker, frames)
    assert types(events) == [("arrived", 1), ("updated", 1)]
    upd = events[1]
    # one "carol" then an unknown frame: the second "carol" (frame 5) completes the evidence
    assert upd.frame == 5 and upd.person_id == "carol" and upd.person == "Carol" and upd.decision == "known"
    # a known track does not fall back to unknown when the face turns away
    events = walk(tracker, [[obs(120, person=None)] for _ in range(5)], start=8)
    assert events == []
    assert tracker.tracks[0].person_id == "carol"


def test_single_wrong_match_does_not_switch_a_known_track() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0, switch_frames=3)
    seq = ["dave", "dave", "erin", "dave", "erin", "erin", "erin"]
    events = walk(tracker, [[obs(100 + i, person=p)] for i, p in enumerate(seq)])
    assert types(events) == [("arrived", 1), ("updated", 1)]
    assert events[1].person_id == "erin" and events[1].frame == 6


def test_out_of_order_frames_are_tolerated() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0)
    order = [0, 1, 3, 2, 4, 6, 5, 7, 9, 8]
    events = []
    for i in order:
        events.extend(tracker.update(i, T0 + i / FPS, [obs(100 + 6 * i)]))
    assert types(events) == [("arrived", 1)]
    track = tracker.tracks[0]
    # the late frames 2, 5 and 8 never moved the box or the clock backwards
    assert track.last_frame == 9
    assert track.box[0] == 100 + 6 * 9
    assert track.last_seen == pytest.approx(T0 + 0.9)
    assert track.hits == 10
    # a frame far older than the timeout is ignored rather than starting a ghost track
    assert tracker.update(0, T0 - 5.0, [obs(400)]) == []
    assert len(tracker.tracks) == 1


def test_a_late_frame_is_matched_where_the_track_was_at_its_time() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=2.0)
    # frames 0..14 at 10 px per frame, frame 3 held up by a slow worker
    events = []
    for i in [0, 1, 2, *range(4, 15)]:
        events.extend(tracker.update(i, T0 + i / FPS, [obs(100 + 10 * i)]))
    # frame 3's box is 110 px from the current one (no overlap), but overlaps frame 2's
    events.extend(tracker.update(3, T0 + 0.3, [obs(130)]))
    assert types(events) == [("arrived", 1)]
    assert tracker.tracks[0].hits == 15


def test_fast_known_person_is_kept_by_identity_when_boxes_do_not_overlap() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0, identity_gate=1.0, motion_gate=0.75)
    # 76 px jumps with 80 px boxes: IoU 0.03 and 0.95 box sides apart, but the same
    # known person close by
    events = walk(tracker, [[obs(76 * i, person="frank")] for i in range(6)])
    assert types(events) == [("arrived", 1)]
    # a stranger making the same jumps is not held together: nothing says it is one person
    tracker2 = Tracker(iou_threshold=0.3, timeout_s=1.0, identity_gate=1.0, motion_gate=0.75, min_hits=1)
    events2 = walk(tracker2, [[obs(76 * i)] for i in range(3)])
    assert [e.type for e in events2] == ["arrived"] * 3


def test_a_head_moving_fast_between_sampled_frames_keeps_its_track() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0, motion_gate=0.75, min_hits=1)
    # 50 px jumps of an 80 px face: IoU 0.23 (< 0.3) but 0.63 sides apart, same size
    events = walk(tracker, [[obs(100, 100 + 50 * (i % 2))] for i in range(6)])
    assert types(events) == [("arrived", 1)]
    # a face twice the size at the same distance is someone else (nearer the camera)
    events = tracker.update(6, T0 + 0.6, [obs(100, 150, size=160)])
    assert [e.type for e in events] == ["arrived"]


def test_sweep_closes_tracks_of_a_silent_camera() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=2.0, min_hits=1)
    walk(tracker, [[obs(100), obs(400)]])
    assert tracker.sweep(T0 + 1.0) == []
    left = tracker.sweep(T0 + 2.5)
    assert types(left) == [("left", 1), ("left", 2)]
    assert tracker.sweep(T0 + 10) == []


def test_state_round_trips_through_json() -> None:
    import json

    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0)
    walk(tracker, [[obs(100 + 4 * i, person="gina"), obs(400)] for i in range(4)])
    copy = Tracker(iou_threshold=0.3, timeout_s=1.0)
    copy.load_state(json.loads(json.dumps(tracker.to_state())))
    assert copy.to_state() == tracker.to_state()
    # and the copy continues the same tracks
    assert copy.update(4, T0 + 0.4, [obs(116, person="gina")]) == []


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        Tracker(iou_threshold=1.5)
    with pytest.raises(ValueError, match="timeout_s"):
        Tracker(timeout_s=0)


# ---- TrackStore on a real Redis ---------------------------------------------

def test_track_store_persists_state_and_returns_events(redis_client, keys) -> None:
    store = TrackStore(redis_client, keys, iou_threshold=0.3, timeout_s=1.0, min_hits=1)
    got = store.update("cam1", 0, T0, [obs(100, person="hana")])
    assert [(e.type, e.camera, e.track_id, e.person_id) for e in got] == [("arrived", "cam1", 1, "hana")]
    assert got[0].model_version == "v1" and got[0].processed_at is not None
    assert store.update("cam1", 1, T0 + 0.1, [obs(104, person="hana")]) == []
    # another camera has its own tracks and ids
    assert [e.track_id for e in store.update("cam2", 0, T0, [obs(300)])] == [1]
    # a second store object (another worker process) sees the same state
    other = TrackStore(redis_client, keys, iou_threshold=0.3, timeout_s=1.0, min_hits=1)
    assert other.load("cam1").tracks[0].hits == 2
    redis_client.sadd(keys.cameras(), "cam1", "cam2")
    left = other.sweep_all(now=T0 + 5)
    assert sorted((e.camera, e.type) for e in left) == [("cam1", "left"), ("cam2", "left")]
    assert store.load("cam1").tracks == []


def test_sweep_idle_leaves_cameras_with_queued_frames_to_the_workers(redis_client, keys) -> None:
    store = TrackStore(redis_client, keys, iou_threshold=0.3, timeout_s=1.0, min_hits=1)
    for camera in ("quiet", "busy"):
        store.update(camera, 0, T0, [obs(100)])
    redis_client.sadd(keys.cameras(), "quiet", "busy")
    redis_client.lpush(keys.in_flight("busy"), keys.frame("busy", 1))
    # within timeout + grace nothing leaves
    assert store.sweep_idle(now=T0 + 1.5, grace_s=1.0) == []
    left = store.sweep_idle(now=T0 + 2.5, grace_s=1.0)
    assert [(e.camera, e.type, e.track_id) for e in left] == [("quiet", "left", 1)]
    assert len(store.load("busy").tracks) == 1
    redis_client.delete(keys.in_flight("busy"))
    assert [e.camera for e in store.sweep_idle(now=T0 + 2.5, grace_s=1.0)] == ["busy"]


def test_idle_sweep_left_of_an_unknown_track_names_its_visitor(redis_client, keys) -> None:
    # The worker records track -> visitor when it joins the face of an unknown arrival
    # (visitors.hook.join_frame); the sweep in the camera producer publishes "left".
    store = TrackStore(redis_client, keys, iou_threshold=0.3, timeout_s=1.0, min_hits=1)
    arrived = store.update("door", 0, T0, [obs(100), obs(400, person="hana"), obs(700)])
    assert sorted((e.track_id, e.decision) for e in arrived) == [(1, "unknown"), (2, "known"), (3, "unknown")]
    # track 1 was joined to v-7; track 3's face was kept in no visitor (say, too blurry)
    redis_client.hset(keys.visitor_tracks("door"), mapping={"1": "v-7"})
    redis_client.sadd(keys.cameras(), "door")
    left = store.sweep_idle(now=T0 + 5, grace_s=1.0)
    assert sorted((e.type, e.track_id, e.decision, e.visitor) for e in left) == [
        ("left", 1, "unknown", "v-7"), ("left", 2, "known", None), ("left", 3, "unknown", None)]
    # the end-of-run close (producers.camera.close_tracks) goes through the same sweep
    store.update("door", 10, T0 + 10, [obs(100)])
    redis_client.hset(keys.visitor_tracks("door"), "4", "v-9")
    assert [(e.track_id, e.visitor) for e in store.sweep("door", now=float("inf"))] == [(4, "v-9")]


def test_track_store_two_concurrent_updaters_keep_consistent_state(redis_url, keys, redis_client) -> None:
    """Two 'workers' (own connections, own threads) take the next frame of one camera
    from a shared queue, as Celery workers do, while two people walk; without the
    transaction, lost updates would give duplicate arrivals, reused ids or missing hits."""
    n_frames = 80
    frames: queue.Queue[int] = queue.Queue()
    for i in range(n_frames):
        frames.put(i)
    results: list = []
    errors: list[BaseException] = []

    def worker() -> None:
        client = redis.Redis.from_url(redis_url)
        # timeout and box history past the whole clip: however far one worker
        # lags behind the other, its frame is neither stale nor unmatched
        store = TrackStore(client, keys, iou_threshold=0.3, timeout_s=30.0, history=n_frames)
        try:
            while True:
                try:
                    i = frames.get_nowait()
                except queue.Empty:
                    return
                observations = [obs(10 + 3 * i, 50, person="ivan"), obs(500 - 3 * i, 300)]
                results.extend(store.update("camX", i, T0 + i / FPS, observations))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert sorted((e.type, e.track_id) for e in results) == [("arrived", 1), ("arrived", 2)]
    state = TrackStore(redis_client, keys, timeout_s=30.0).load("camX")
    assert state.next_id == 3
    assert sorted(tr.hits for tr in state.tracks) == [n_frames, n_frames]
    assert state.newest_frame == n_frames - 1
