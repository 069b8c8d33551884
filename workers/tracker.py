"""Person-tracks across the frames of one camera: one event per person, not per frame.

The core, :class:`Tracker`, is pure: frames of observations (box + identity decision)
in, track events out. It links an observation to a live track by box overlap (IoU),
or nearness for a same-sized face, preferring the track whose known identity agrees;
an observation that links to none starts a new track, which "arrived" once seen in
``min_hits`` frames (a one-frame false detection stays silent). A track's identity
decision changes ("updated") when ``switch_frames`` matched observations in a row
(ignoring "unknown" ones) name another known person; a known track never falls back
to "unknown", because a face turned away is the same person, not a stranger. A track
unseen for ``timeout_s`` seconds of capture time "left" (only tracks that arrived
ever leave).

Frames of one camera are processed by several worker processes, so they may arrive
out of order: a late frame is matched against where each track was at that frame
(each track remembers its recent boxes), adds identity evidence, but never moves a
track's box or clock backwards; a frame older than the newest by more than
``timeout_s`` is ignored (its tracks may already have left).

:class:`TrackStore` keeps each camera's tracker state as JSON in Redis
(``keys.tracks(camera)``) with a revision counter; an update is applied inside a WATCH/MULTI
transaction (:meth:`TrackStore.update`, sweeps) or, on the frame path, planned on the state read
with the frame's claim and committed with the frame's events by a script that checks the
revision (:meth:`TrackStore.plan`, :mod:`faec_rec.workers.commit`); both are retried on
conflict, so concurrent workers never lose or duplicate a track.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis as redis_lib

from faec_rec.errors import TrackStateConflict
from faec_rec.keys import Keys
from faec_rec.workers.events import Decision, Event, EventType

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

# The vote of a track before it arrives: a chip this sharp (variance of the Laplacian,
# the enrolment gate's measure; LFW median ~49, the gate refuses under 15) counts fully,
# a blurrier one in proportion, never less than MIN_QUALITY_WEIGHT.
SHARP_REFERENCE = 50.0
MIN_QUALITY_WEIGHT = 0.1
UNKNOWN_VOTE = ""  # the votes key of "unknown" observations
# An "unknown" frame counts half: a face turned away is more often the same person than
# a stranger, so one sharp named frame outweighs one sharp unknown one, two unknown ones do not.
UNKNOWN_WEIGHT = 0.5


@dataclass(frozen=True)
class Observation:
    """One recognised face in one frame.

    box: ``(x1, y1, x2, y2)`` pixels; score: best gallery similarity in [-1, 1];
    decision: ``"known"`` or ``"unknown"``; person_id/person: the match (None when unknown).
    """

    box: Box
    person_id: str | None
    person: str | None
    score: float
    decision: str
    model_version: str | None = None
    quality: float | None = None  # sharpness of the aligned chip (variance of the Laplacian); None: not measured

    @property
    def identity(self) -> str | None:
        """The person id when the decision is "known", else None."""
        return self.person_id if self.decision == Decision.KNOWN.value else None

    @property
    def weight(self) -> float:
        """How much this observation counts in its track's vote: its image quality
        (sharpness over ``SHARP_REFERENCE``, within [``MIN_QUALITY_WEIGHT``, 1]) times,
        for a named face, its similarity score, for an unknown one ``UNKNOWN_WEIGHT``."""
        q = 1.0 if self.quality is None else min(1.0, max(MIN_QUALITY_WEIGHT, self.quality / SHARP_REFERENCE))
        return q * (max(float(self.score), 0.0) if self.identity is not None else UNKNOWN_WEIGHT)


@dataclass
class Track:
    """The tracker's memory of one person-track (JSON-serialisable)."""

    track_id: int
    box: list[float]
    first_frame: int
    last_frame: int
    first_seen: float
    last_seen: float
    person_id: str | None
    person: str | None
    score: float
    decision: str
    model_version: str | None = None
    hits: int = 1
    confirmed: bool = False
    pending_id: str | None = None
    pending_count: int = 0
    # [frame, t, x1, y1, x2, y2] over the last timeout_s, oldest first: late frames
    # are matched against where the track was at their time, not where it is now
    history: list[list[float]] = field(default_factory=list)
    # before arrival: person id (UNKNOWN_VOTE for "unknown") -> [summed weight, best score, name]
    votes: dict[str, list[Any]] = field(default_factory=dict)

    def box_at(self, frame: int) -> list[float]:
        """The track's box in ``frame``: the current one, or for an older frame the
        recorded box nearest to it."""
        if frame >= self.last_frame or not self.history:
            return self.box
        best = min(self.history, key=lambda h: abs(h[0] - frame))
        return list(best[2:])

    @property
    def identity(self) -> str | None:
        return self.person_id if self.decision == Decision.KNOWN.value else None


@dataclass(frozen=True)
class TrackEvent:
    """What the tracker decided: ``type`` is "arrived", "updated" or "left".

    ``frame``/``t`` are the frame and capture time (unix seconds) the event is about:
    the triggering frame for arrived/updated, the last frame seen for "left".
    ``observation``: for arrived/updated, the index in that frame's observations of
    the face that made the event (None for "left").
    """

    type: str
    track_id: int
    frame: int
    t: float
    box: list[float]
    person_id: str | None
    person: str | None
    score: float
    decision: str
    model_version: str | None = None
    detail: str | None = None
    observation: int | None = None

    def to_event(self, camera: str, processed_at: float | None = None, features_key: str | None = None) -> Event:
        """The published :class:`Event` for ``camera`` (``features_key``: see :class:`Event`)."""
        return Event(
            type=self.type,
            camera=camera,
            frame=self.frame,
            captured_at=self.t,
            processed_at=time.time() if processed_at is None else processed_at,
            box=list(self.box),
            person_id=self.person_id,
            person=self.person,
            score=self.score,
            decision=self.decision,
            model_version=self.model_version,
            track_id=self.track_id,
            detail=self.detail,
            features_key=features_key,
        )


def _add_vote(track: Track, obs: Observation) -> None:
    key = obs.identity if obs.identity is not None else UNKNOWN_VOTE
    held = track.votes.setdefault(key, [0.0, float("-inf"), obs.person if obs.identity is not None else None])
    held[0] = round(held[0] + obs.weight, 6)
    held[1] = max(held[1], float(obs.score))


def _follow_vote(track: Track) -> None:
    """Set a not yet arrived track's identity to its vote's leader (ties: the earlier
    leader stays; "unknown" wins a tie with a person)."""
    if not track.votes:
        return
    leader = max(track.votes.items(), key=lambda kv: (kv[1][0], kv[0] == UNKNOWN_VOTE, kv[0] == (track.identity or UNKNOWN_VOTE)))
    key, (_, best, name) = leader
    if key == UNKNOWN_VOTE:
        track.person_id, track.person = None, None
        track.decision = Decision.UNKNOWN.value
        track.score = float(best)
    else:
        track.person_id, track.person = key, name
        track.decision = Decision.KNOWN.value
        track.score = float(best)
    track.pending_id, track.pending_count = None, 0


def _history_entry(frame: int, t: float, box: Sequence[float]) -> list[float]:
    # Rounded: the state is JSON read and written on every frame of the camera.
    return [frame, round(t, 3), *(round(float(v), 1) for v in box)]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (n, 4) with every box in ``b`` (m, 4).

    Boxes are ``[x1, y1, x2, y2]``; returns (n, m) float64 in [0, 1].
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Centre distance of (n, 4) and (m, 4) boxes in units of the ``a`` box's larger side."""
    ca = (a[:, None, :2] + a[:, None, 2:]) / 2
    cb = (b[None, :, :2] + b[None, :, 2:]) / 2
    side = np.maximum(a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]).clip(1.0, None)
    return np.linalg.norm(ca - cb, axis=2) / side[:, None]


class Tracker:
    """Tracks of one camera; see the module docstring for the rules.

    iou_threshold: least box overlap that continues a track; timeout_s: capture-time
    seconds after which an unseen track has left; switch_frames: matched observations
    in a row needed to change a track's identity; identity_gate: an observation of the
    track's own known person also continues it when IoU is too low (fast motion,
    dropped frames) if the centres are within this many box sides; motion_gate: any
    observation continues a track whose box has about its size (within a factor 1.5)
    and whose centre is within this many box sides (a head moving fast between
    sampled frames overlaps too little); min_hits: frames a track must be seen in
    before it "arrived" (1 = at once; 2 keeps one-frame false detections silent);
    max_tracks: live
    tracks kept, the least recently seen leave first beyond it; history: most boxes
    remembered per track (those of the last ``timeout_s``) to match late frames.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        timeout_s: float = 2.0,
        switch_frames: int = 2,
        identity_gate: float = 1.0,
        motion_gate: float = 0.75,
        min_hits: int = 2,
        max_tracks: int = 256,
        history: int = 48,
    ) -> None:
        if not 0 < iou_threshold < 1:
            raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        if switch_frames < 1:
            raise ValueError(f"switch_frames must be >= 1, got {switch_frames}")
        if min_hits < 1:
            raise ValueError(f"min_hits must be >= 1, got {min_hits}")
        if max_tracks < 1:
            raise ValueError(f"max_tracks must be >= 1, got {max_tracks}")
        self.iou_threshold = iou_threshold
        self.timeout_s = timeout_s
        self.switch_frames = switch_frames
        self.identity_gate = identity_gate
        self.motion_gate = motion_gate
        self.min_hits = min_hits
        self.max_tracks = max_tracks
        self.history = history
        self.tracks: list[Track] = []
        self.next_id = 1
        self.newest_frame = -1
        self.newest_t = float("-inf")

    # ---- the one public step ----------------------------------------------
    def update(self, frame: int, t: float, observations: Sequence[Observation]) -> list[TrackEvent]:
        """Apply one processed frame (number ``frame``, captured at unix time ``t``).

        Returns the events it causes, in order: "updated" and "arrived" for this
        frame's observations, then "left" for tracks now unseen past the timeout.
        """
        if t < self.newest_t - self.timeout_s:
            log.debug("frame %d is %.2f s older than the newest; ignored", frame, self.newest_t - t)
            return []
        in_order = frame >= self.newest_frame
        events: list[TrackEvent] = []
        pairs = self._match(frame, observations)
        matched_obs = set()
        for ti, oi in pairs:
            matched_obs.add(oi)
            event = self._continue(self.tracks[ti], frame, t, observations[oi])
            if event is not None:
                events.append(replace(event, observation=oi))
        for oi, obs in enumerate(observations):
            if oi not in matched_obs:
                event = self._start(frame, t, obs)
                if event is not None:
                    events.append(replace(event, observation=oi))
        events.sort(key=lambda e: e.track_id)
        if in_order:
            self.newest_frame = frame
        self.newest_t = max(self.newest_t, t)
        events.extend(self._expire(self.newest_t))
        events.extend(self._evict_excess())
        return events

    def sweep(self, now: float) -> list[TrackEvent]:
        """"left" events for every track unseen since ``now - timeout_s`` (unix seconds).

        For a periodic task: a camera that stops sending frames still closes its tracks.
        """
        return self._expire(now)

    # ---- steps -------------------------------------------------------------
    def _match(self, frame: int, observations: Sequence[Observation]) -> list[tuple[int, int]]:
        """Greedy one-to-one (track index, observation index) pairs.

        Candidates overlap enough, or are a same-sized face close by, or the same
        known person a little further. Agreeing identity ranks first, so two people
        crossing keep their tracks; then real overlap, by IoU; then the weaker links,
        the most recently seen track first, then the nearest.
        """
        if not self.tracks or not observations:
            return []
        tboxes = np.array([tr.box_at(frame) for tr in self.tracks], dtype=np.float64)
        oboxes = np.array([ob.box for ob in observations], dtype=np.float64)
        iou = iou_matrix(tboxes, oboxes)
        dist = _centre_distance(tboxes, oboxes)
        tside = np.maximum(tboxes[:, 2] - tboxes[:, 0], tboxes[:, 3] - tboxes[:, 1]).clip(1.0, None)
        oside = np.maximum(oboxes[:, 2] - oboxes[:, 0], oboxes[:, 3] - oboxes[:, 1]).clip(1.0, None)
        ratio = oside[None, :] / tside[:, None]
        same_size = (ratio >= 1 / 1.5) & (ratio <= 1.5)
        candidates: list[tuple[tuple[float, ...], int, int]] = []
        for ti, track in enumerate(self.tracks):
            for oi, obs in enumerate(observations):
                tid, oid = track.identity, obs.identity
                agree = 0 if tid is None or oid is None else (1 if tid == oid else -1)
                d = float(dist[ti, oi])
                linked = (
                    iou[ti, oi] >= self.iou_threshold
                    or (same_size[ti, oi] and d <= self.motion_gate)
                    or (agree == 1 and d <= self.identity_gate)
                )
                if linked:
                    strong = iou[ti, oi] >= self.iou_threshold
                    order = -float(iou[ti, oi]) if strong else float(abs(frame - track.last_frame))
                    candidates.append(((-agree, 0 if strong else 1, order, d, ti, oi), ti, oi))
        candidates.sort(key=lambda c: c[0])
        used_t: set[int] = set()
        used_o: set[int] = set()
        pairs: list[tuple[int, int]] = []
        for _rank, ti, oi in candidates:
            if ti in used_t or oi in used_o:
                continue
            used_t.add(ti)
            used_o.add(oi)
            pairs.append((ti, oi))
        return pairs

    def _start(self, frame: int, t: float, obs: Observation) -> TrackEvent | None:
        track = Track(
            track_id=self.next_id,
            box=[float(v) for v in obs.box],
            first_frame=frame,
            last_frame=frame,
            first_seen=t,
            last_seen=t,
            person_id=obs.identity,
            person=obs.person if obs.identity is not None else None,
            score=float(obs.score),
            decision=obs.decision,
            model_version=obs.model_version,
            history=[_history_entry(frame, t, obs.box)],
        )
        _add_vote(track, obs)
        self.next_id += 1
        self.tracks.append(track)
        return self._confirm(track, frame, t)

    def _confirm(self, track: Track, frame: int, t: float) -> TrackEvent | None:
        """"arrived" once a track has been seen in ``min_hits`` frames: a face
        detected in a single frame (often a false detection) stays silent."""
        if track.confirmed or track.hits < self.min_hits:
            return None
        track.confirmed = True
        return self._event(EventType.ARRIVED, track, frame, t)

    def _continue(self, track: Track, frame: int, t: float, obs: Observation) -> TrackEvent | None:
        """Fold one matched observation into ``track``: "arrived" if this confirms
        it, "updated" if its identity changed, else None."""
        track.hits += 1
        if frame >= track.last_frame:
            # Only a newer frame moves the box and the clock (out-of-order tolerance).
            track.box = [float(v) for v in obs.box]
            track.last_frame = frame
            track.last_seen = max(track.last_seen, t)
            track.history.append(_history_entry(frame, t, track.box))
            horizon = track.last_seen - self.timeout_s
            track.history = [h for h in track.history[-self.history :] if h[1] >= horizon]
        if obs.model_version is not None:
            track.model_version = obs.model_version
        changed = self._weigh_identity(track, obs)
        arrived = self._confirm(track, frame, t)
        if arrived is not None:
            return arrived  # it carries the identity as it now stands
        if changed and track.confirmed:
            return self._event(EventType.UPDATED, track, frame, t)
        return None

    def _weigh_identity(self, track: Track, obs: Observation) -> bool:
        """Add one observation's identity evidence to ``track``; True if its identity changed.

        Before the track arrived its identity is the leader of a quality- and
        score-weighted vote over all its frames so far (:func:`_add_vote`): one blurry
        frame that names someone else, or nobody, does not decide the "arrived"
        event. After arrival a change needs ``switch_frames`` agreeing frames in a row.
        """
        if not track.confirmed:
            _add_vote(track, obs)
            _follow_vote(track)
            return False
        oid = obs.identity
        if oid is None:
            # "unknown" is no evidence for or against anyone: a face turned away
            # stays the known person, and does not break a pending switch.
            if track.identity is None:
                track.score = float(obs.score)
            return False
        if oid == track.identity:
            track.pending_id, track.pending_count = None, 0
            track.score = max(track.score, float(obs.score))
            return False
        if track.pending_id == oid:
            track.pending_count += 1
        else:
            track.pending_id, track.pending_count = oid, 1
        if track.pending_count < self.switch_frames:
            return False
        track.person_id, track.person = oid, obs.person
        track.decision = Decision.KNOWN.value
        track.score = float(obs.score)
        track.pending_id, track.pending_count = None, 0
        return True

    def identities(self) -> set[str]:
        """Person ids the tracks hold: their identities and pending switches."""
        held = {tr.identity for tr in self.tracks} | {tr.pending_id for tr in self.tracks}
        held |= {pid for tr in self.tracks for pid in tr.votes if pid != UNKNOWN_VOTE}
        return {pid for pid in held if pid is not None}

    def forget_people(self, person_ids: set[str]) -> bool:
        """Make tracks of people no longer enrolled (forgotten) "unknown", silently,
        so no later event of theirs names them; True if a track changed."""
        changed = False
        for track in self.tracks:
            for pid in set(track.votes) & person_ids:
                del track.votes[pid]
                changed = True
            if track.pending_id in person_ids:
                track.pending_id, track.pending_count = None, 0
                changed = True
            if track.person_id in person_ids:
                track.person_id, track.person, track.score = None, None, 0.0
                track.decision = Decision.UNKNOWN.value
                changed = True
        return changed

    def _expire(self, now: float) -> list[TrackEvent]:
        gone = [tr for tr in self.tracks if now - tr.last_seen > self.timeout_s]
        return self._remove(gone)

    def _evict_excess(self) -> list[TrackEvent]:
        if len(self.tracks) <= self.max_tracks:
            return []
        by_age = sorted(self.tracks, key=lambda tr: tr.last_seen)
        return self._remove(by_age[: len(self.tracks) - self.max_tracks])

    def _remove(self, gone: list[Track]) -> list[TrackEvent]:
        """Drop ``gone``; "left" for those that had arrived (unconfirmed ones vanish silently)."""
        if not gone:
            return []
        ids = {tr.track_id for tr in gone}
        self.tracks = [tr for tr in self.tracks if tr.track_id not in ids]
        return [
            self._event(
                EventType.LEFT, tr, tr.last_frame, tr.last_seen,
                detail=f"seen in {tr.hits} frames over {tr.last_seen - tr.first_seen:.1f} s",
            )
            for tr in sorted(gone, key=lambda tr: tr.track_id)
            if tr.confirmed
        ]

    @staticmethod
    def _event(kind: EventType, track: Track, frame: int, t: float, detail: str | None = None) -> TrackEvent:
        return TrackEvent(
            type=kind.value,
            track_id=track.track_id,
            frame=frame,
            t=t,
            box=list(track.box),
            person_id=track.identity,
            person=track.person if track.identity is not None else None,
            score=track.score,
            decision=track.decision,
            model_version=track.model_version,
            detail=detail,
        )

    # ---- persistence --------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable state (tracks and counters, not the parameters)."""
        return {
            "next_id": self.next_id,
            "newest_frame": self.newest_frame,
            "newest_t": None if self.newest_t == float("-inf") else self.newest_t,
            "tracks": [asdict(tr) for tr in self.tracks],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace this tracker's tracks and counters with ``state`` from :meth:`to_state`."""
        self.next_id = int(state.get("next_id", 1))
        self.newest_frame = int(state.get("newest_frame", -1))
        newest_t = state.get("newest_t")
        self.newest_t = float("-inf") if newest_t is None else float(newest_t)
        self.tracks = [Track(**tr) for tr in state.get("tracks", [])]


@dataclass(frozen=True)
class TrackPlan:
    """One frame applied to a camera's tracker state, not yet written (:meth:`TrackStore.plan`).

    events: what to publish if the plan commits; state: the new state (JSON text); rev: the
    revision of the state it was made from ("" when there was none); held: the person ids the
    state named before this frame (less those forgotten), which must all still be enrolled when
    it commits (as :meth:`TrackStore.update` checks them before applying a frame).
    """

    events: list[Event]
    state: str
    rev: str
    held: list[str]


@dataclass
class TrackStore:
    """Per-camera tracker state in Redis, shared by every worker process.

    ``redis``: a redis-py client (decoded or not); the other fields are the
    :class:`Tracker` parameters. :meth:`update` and the sweeps are one optimistic
    transaction each on ``keys.tracks(camera)``, retried at once on conflict for up to
    ``max_wait_s``; the frame path reads with :meth:`queue_read`, plans with :meth:`plan`
    and commits with :mod:`faec_rec.workers.commit` (same revision, same retry bound).
    """

    redis: Any
    keys: Keys
    iou_threshold: float = 0.3
    timeout_s: float = 2.0
    switch_frames: int = 2
    min_hits: int = 2
    history: int = 48
    max_wait_s: float = 10.0
    _tracker_args: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tracker_args = {
            "iou_threshold": self.iou_threshold,
            "timeout_s": self.timeout_s,
            "switch_frames": self.switch_frames,
            "min_hits": self.min_hits,
            "history": self.history,
        }
        Tracker(**self._tracker_args)  # validate the parameters now, not on first frame

    @classmethod
    def from_settings(cls, redis: Any, keys: Keys, events_config: Any) -> TrackStore:
        """Build from ``settings.events`` (track_iou, track_timeout_s, track_switch_frames, track_min_hits)."""
        return cls(
            redis, keys,
            iou_threshold=events_config.track_iou,
            timeout_s=events_config.track_timeout_s,
            switch_frames=events_config.track_switch_frames,
            min_hits=events_config.track_min_hits,
        )

    def update(
        self, camera: str, frame: int, captured_at: float, observations: Sequence[Observation],
        enrolled: Callable[[set[str]], set[str]] | None = None,
        features_keys: Sequence[str | None] | None = None,
    ) -> list[Event]:
        """Apply one frame of ``camera``; returns the events to publish (maybe none).

        ``enrolled`` (person ids -> those still enrolled) lets the tracks of a
        person forgotten since drop that identity before this frame is applied.
        ``features_keys`` (one per observation, or None): an arrived/updated event
        made by observation ``i`` carries ``features_keys[i]`` as its ``features_key``;
        the caller stores that face's features there.
        """
        def step(tracker: Tracker) -> list[TrackEvent]:
            held = tracker.identities() if enrolled is not None else set()
            if held:
                tracker.forget_people(held - enrolled(held))
            return tracker.update(frame, captured_at, observations)

        found = self._transact(camera, step, always_write=True)
        now = time.time()
        return [
            ev.to_event(camera, now, None if features_keys is None or ev.observation is None
                        else features_keys[ev.observation])
            for ev in found
        ]

    # ---- the frame path: read with the frame's claim, commit with its events -----------
    def queue_read(self, pipe: Any, camera: str) -> None:
        """Queue the read of ``camera``'s state on ``pipe``; its reply goes to :meth:`plan`."""
        pipe.hmget(self.keys.tracks(camera), "state", "rev")

    def plan(
        self, camera: str, frame: int, captured_at: float, observations: Sequence[Observation], read: Any,
        forget: set[str] | frozenset[str] = frozenset(),
        features_keys: Sequence[str | None] | None = None,
    ) -> TrackPlan:
        """Apply one frame to the state ``read`` (the reply of :meth:`queue_read`) without
        writing it: the caller commits the plan with the frame's events in one request
        (:mod:`faec_rec.workers.commit`), which fails if the state's revision moved on
        (then read again and plan again) or if a person the tracks named before this frame
        is no longer enrolled (then plan again on the same read with them in ``forget``:
        their tracks turn "unknown" first, as :meth:`update`'s ``enrolled`` check does).
        """
        raw, rev = read if read is not None else (None, None)
        tracker = Tracker(**self._tracker_args)
        if raw:
            tracker.load_state(json.loads(raw))
        before = tracker.identities()
        if forget:
            tracker.forget_people(set(forget) & before)
        found = tracker.update(frame, captured_at, observations)
        now = time.time()
        events = [
            ev.to_event(camera, now, None if features_keys is None or ev.observation is None
                        else features_keys[ev.observation])
            for ev in found
        ]
        rev_text = "" if rev is None else (rev.decode() if isinstance(rev, bytes) else str(rev))
        return TrackPlan(events=events, state=json.dumps(tracker.to_state(), separators=(",", ":")), rev=rev_text,
                         held=sorted(before - set(forget)))

    def sweep(self, camera: str, now: float | None = None) -> list[Event]:
        """"left" events for ``camera``'s tracks unseen past the timeout at ``now`` (unix s)."""
        at = time.time() if now is None else now
        found = self._transact(camera, lambda tr: tr.sweep(at), always_write=False)
        if not found:
            return []
        from faec_rec.visitors.hook import with_left_visitors  # unknown tracks' "left" names their visitor

        stamp = time.time()
        return with_left_visitors(self.redis, self.keys, camera, [ev.to_event(camera, stamp) for ev in found])

    def sweep_all(self, now: float | None = None) -> list[Event]:
        """:meth:`sweep` every camera registered in ``keys.cameras()``."""
        events: list[Event] = []
        for raw in sorted(self.redis.smembers(self.keys.cameras())):
            camera = raw.decode() if isinstance(raw, bytes) else str(raw)
            events.extend(self.sweep(camera, now))
        return events

    def sweep_idle(
        self, now: float | None = None, grace_s: float = 1.0, cameras: Sequence[str] | None = None
    ) -> list[Event]:
        """Close stale tracks of cameras with no frame waiting for a worker.

        For a periodic caller (a beat task, the camera producer). ``cameras``
        defaults to every camera in ``keys.cameras()``. A camera whose in-flight
        list is not empty is left to the workers: its queued frames may still
        continue its tracks. ``grace_s`` covers a frame already claimed by a worker
        but not yet tracked: tracks are swept at ``now - grace_s``.
        """
        at = (time.time() if now is None else now) - grace_s
        if cameras is None:
            cameras = sorted(
                (raw.decode() if isinstance(raw, bytes) else str(raw))
                for raw in self.redis.smembers(self.keys.cameras())
            )
        events: list[Event] = []
        for camera in cameras:
            if self.redis.llen(self.keys.in_flight(camera)):
                continue
            events.extend(self.sweep(camera, at))
        return events

    def load(self, camera: str) -> Tracker:
        """The camera's current tracker (a copy; changing it changes nothing in Redis)."""
        tracker = Tracker(**self._tracker_args)
        raw = self.redis.hget(self.keys.tracks(camera), "state")
        if raw:
            tracker.load_state(json.loads(raw))
        return tracker

    def _transact(
        self, camera: str, step: Callable[[Tracker], list[TrackEvent]], always_write: bool
    ) -> list[TrackEvent]:
        key = self.keys.tracks(camera)
        with self.redis.pipeline(transaction=True) as pipe:
            deadline = time.monotonic() + self.max_wait_s
            while time.monotonic() < deadline:
                try:
                    pipe.watch(key)
                    tracker = Tracker(**self._tracker_args)
                    raw = pipe.hget(key, "state")
                    if raw:
                        tracker.load_state(json.loads(raw))
                    events = step(tracker)
                    if not events and not always_write:
                        pipe.unwatch()
                        return []
                    pipe.multi()
                    pipe.hset(key, mapping={
                        "state": json.dumps(tracker.to_state(), separators=(",", ":")),
                        "updated_at": repr(time.time()),
                    })
                    pipe.hincrby(key, "rev", 1)  # the frame path's commit checks it (TrackStore.plan)
                    pipe.execute()
                    return events
                except redis_lib.WatchError:
                    # Another worker wrote this camera's state first: redo on its result
                    # at once. A growing back-off here would starve this worker while a
                    # busier one keeps winning, and its frame would arrive ever later.
                    time.sleep(random.uniform(0, 0.0002))
                    continue
        raise TrackStateConflict(
            f"tracker state of camera {camera!r} kept changing for {self.max_wait_s} s; "
            "too many workers on one camera, or raise TrackStore.max_wait_s"
        )
