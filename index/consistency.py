"""Do the photos of one enrolment show the person they are enrolled as?

Issue 17 item 21: a photo of someone else added to a person silently (``enrol "Barack
Obama" biden.jpg``) makes that other person be named as them afterwards. Pure
functions over L2-normalised vectors of the projection in service:

* photos added to a person who already has templates must reach ``pair_threshold -
  margin`` against at least one of them (margin 0: the per-pair threshold, 0.9214 for
  base, 0.1% of LFW different-person pairs reach it; 2.7% of same-person pairs do not,
  fewer against the best of several templates. A 0.02 margin was tried: LFW photos of
  David Beckham reach 0.90-0.91 against Arnold Schwarzenegger's, his own 0.94-0.97);
* photos of one call for a new person must agree: they are linked when a pair
  scores at least ``pair_threshold`` (0.1% of different-person pairs), and only a
  strict majority linked together (the largest connected group) is kept, and a photo
  outside it within :data:`GREY_BAND` of the threshold is kept with a warning; without
  one, three or more photos (a folder of many people) are all refused. Two photos
  within :data:`GREY_BAND` under the threshold are both kept with a warning
  (:data:`TWO_DISAGREE`): which one is wrong cannot be told, and 2.7% of same-person
  pairs fall under the threshold, so refusing both would turn away real people
  (Arnold Schwarzenegger's first two LFW photos score 0.892); two further apart are
  both refused.
"""
from __future__ import annotations

import numpy as np

NOT_THIS_PERSON = "not_this_person"
PHOTOS_DISAGREE = "photos_disagree"
# not a refusal: the warning on a kept photo of a new person that matches none of the others clearly
TWO_DISAGREE = "check: this photo does not clearly match the other photos of this request"
MARGIN = 0.0
# below the per-pair threshold by at most this, a photo of a new person's call that is outside
# the majority is kept with a warning rather than refused (see check_photos)
GREY_BAND = 0.05


def check_photos(new: np.ndarray, existing: np.ndarray, pair_threshold: float, margin: float = MARGIN) -> list[tuple[str | None, float]]:
    """For each row of ``new`` (n, d): ``(None, score)`` to keep it, else ``(reason, score)``.

    ``existing``: (m, d) the person's current template vectors (m may be 0). ``score``
    is the best similarity to the existing templates, or to the other photos of the
    call when there are none (-1 for a lone photo).
    """
    new = np.asarray(new, np.float32).reshape(len(new), -1)
    existing = np.asarray(existing, np.float32).reshape(len(existing), -1) if len(existing) else np.zeros((0, new.shape[1]), np.float32)
    if len(new) == 0:
        return []
    if len(existing):
        best = (new @ existing.T).max(axis=1)
        return [(None if s >= pair_threshold - margin else NOT_THIS_PERSON, float(s)) for s in best]
    if len(new) == 1:
        return [(None, -1.0)]
    sims = new @ new.T
    np.fill_diagonal(sims, -1.0)
    best = sims.max(axis=1)
    group = _largest_group(sims >= pair_threshold)
    if len(new) == 2 and len(group) == 1 and best[0] >= pair_threshold - GREY_BAND:
        return [(None, float(s)) for s in best]  # no majority of two: kept, with a warning (module docstring)
    if 2 * len(group) <= len(new):
        return [(PHOTOS_DISAGREE, float(s)) for s in best]
    members = sorted(group)
    verdicts: list[tuple[str | None, float]] = []
    for i, s in enumerate(best):
        if i in group:
            verdicts.append((None, float(s)))
            continue
        # outside the majority: refused only when clearly someone else; a photo in the grey
        # band under the threshold is kept (with a warning), as same-person pairs often land
        # there (Arnold Schwarzenegger's first LFW photo scores 0.89-0.92 against his others)
        to_group = float(sims[i, members].max())
        verdicts.append((None, float(s)) if to_group >= pair_threshold - GREY_BAND else (PHOTOS_DISAGREE, float(s)))
    return verdicts


def _largest_group(linked: np.ndarray) -> set[int]:
    """Largest connected component of a boolean adjacency matrix (lowest index first on ties)."""
    seen: set[int] = set()
    best: set[int] = set()
    for start in range(len(linked)):
        if start in seen:
            continue
        comp, todo = {start}, [start]
        while todo:
            i = todo.pop()
            for j in np.flatnonzero(linked[i]).tolist():
                if j not in comp:
                    comp.add(j)
                    todo.append(j)
        seen |= comp
        if len(comp) > len(best):
            best = comp
    return best
