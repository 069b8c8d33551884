"""Batch identification reports: a JSON file for programs and one self-contained
HTML page for people.

The JSON lists every image (``path``) with its ``faces`` (``box`` [x1, y1, x2, y2]
in image pixels, ``person`` (name, or null for a stranger), ``person_id``,
``score``, ``decision`` "known"/"unknown", ``runner_up``) and an ``error`` (null,
or why the image could not be used), plus a ``summary`` of counts.

The HTML page shows every image as a thumbnail (base64 JPEG inside the page, boxes
and names drawn, strangers in another colour), filterable and sortable by decision
with a few lines of inline JavaScript. It needs no network and no other file.

Building the report is pure (records in, dict out); reading pixels for the
thumbnails goes through a ``loader`` the caller passes (the face engine's
``load_image`` by default), so boxes are drawn on the same pixels the engine saw.

A folder job spools its records to a temporary file as they arrive (:class:`ReportSpool`),
and both files are written piece by piece, so a report of 100,000 images holds only each
record's path and offset in memory, not the records.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from faec_rec.files import atomic_writer, display_name, is_clean_name, name_bytes

log = logging.getLogger(__name__)

REPORT_FORMAT = 1
THUMB_MAX_SIDE = 360
THUMB_JPEG_QUALITY = 80

# RGB colours of drawn boxes; the same hues are used by the page's CSS.
KNOWN_RGB = (46, 160, 67)
UNKNOWN_RGB = (229, 57, 53)


class Decision(str, Enum):
    """Per-face open-set answer as it appears in reports."""

    KNOWN = "known"
    UNKNOWN = "unknown"


class ImageStatus(str, Enum):
    """One word per image, used to filter and sort the HTML page."""

    ERROR = "error"  # the image could not be used
    NO_FACE = "no-face"  # readable, nobody found
    STRANGER = "stranger"  # at least one face is unknown
    KNOWN = "known"  # every face has a name


# ---- the JSON report ------------------------------------------------------

def _round(value: Any, digits: int = 4) -> float | None:
    if value is None:
        return None
    return round(float(value), digits)


def normalise_face(face: Mapping[str, Any]) -> dict[str, Any]:
    """One face record in the report's shape (unknown fields dropped, numbers rounded).

    ``box`` becomes four floats rounded to 0.1 px; ``decision`` must be
    "known" or "unknown" (anything else is reported as "unknown"); a stranger's
    ``person`` is always null.
    """
    box = [round(float(v), 1) for v in face.get("box", ())]
    if len(box) != 4:
        raise ValueError(f"face box must have 4 numbers [x1, y1, x2, y2], got {face.get('box')!r}")
    decision = Decision.KNOWN.value if face.get("decision") == Decision.KNOWN.value else Decision.UNKNOWN.value
    known = decision == Decision.KNOWN.value
    return {
        "box": box,
        "person": face.get("person") if known else None,
        "person_id": face.get("person_id") if known else None,
        "score": _round(face.get("score")),
        "decision": decision,
        "runner_up": face.get("runner_up"),
        # the visitor (faec_rec.visitors) a stranger was grouped into, e.g. "v-12"
        "visitor": None if known else face.get("visitor"),
    }


def normalise_image(record: Mapping[str, Any]) -> dict[str, Any]:
    """One image record in the report's shape: ``path``, ``faces``, ``error``, ``model_version``."""
    error = record.get("error") or None
    faces = [] if error else [normalise_face(f) for f in record.get("faces") or ()]
    return {
        **path_fields(str(record.get("path") or record.get("name") or "")),
        "faces": faces,
        "error": display_name(str(error)) if error else None,
        "model_version": record.get("model_version"),
    }


def path_fields(path: str) -> dict[str, str]:
    """``{"path": display form}``, plus ``"path_bytes"`` (base64 of the exact bytes)
    when the file name is not valid UTF-8 (``\\xe9`` in ``path`` stands for byte 0xe9)."""
    fields = {"path": display_name(path)}
    if not is_clean_name(path):
        fields["path_bytes"] = base64.b64encode(name_bytes(path)).decode("ascii")
    return fields


def source_path(entry: Mapping[str, Any]) -> str:
    """The file a report entry names, as ``open`` wants it (inverse of :func:`path_fields`)."""
    raw = entry.get("path_bytes")
    return os.fsdecode(base64.b64decode(raw)) if raw else str(entry["path"])


def image_status(image: Mapping[str, Any]) -> ImageStatus:
    """Classify a normalised image record for filtering."""
    if image.get("error"):
        return ImageStatus.ERROR
    faces = image.get("faces") or []
    if not faces:
        return ImageStatus.NO_FACE
    if any(f["decision"] != Decision.KNOWN.value for f in faces):
        return ImageStatus.STRANGER
    return ImageStatus.KNOWN


class Summary:
    """The report's counts (images, errors, faces, known, unknown, images per status, faces
    per named person and per visitor), added one normalised image record at a time."""

    def __init__(self) -> None:
        self.images = 0
        self.faces = 0
        self.statuses: Counter[str] = Counter()
        self.people: Counter[str] = Counter()
        self.visitors: Counter[str] = Counter()
        self.versions: set[str] = set()

    def add(self, image: Mapping[str, Any]) -> None:
        self.images += 1
        self.statuses[image_status(image).value] += 1
        self.faces += len(image["faces"])
        self.people.update(f["person"] for f in image["faces"] if f["decision"] == Decision.KNOWN.value)
        self.visitors.update(f["visitor"] for f in image["faces"] if f.get("visitor"))
        if image.get("model_version"):
            self.versions.add(image["model_version"])

    def as_dict(self) -> dict[str, Any]:
        known = sum(self.people.values())
        return {
            "images": self.images,
            "errors": self.statuses.get(ImageStatus.ERROR.value, 0),
            "faces": self.faces,
            "known": known,
            "unknown": self.faces - known,
            "by_status": {s.value: self.statuses.get(s.value, 0) for s in ImageStatus},
            "people": dict(sorted(self.people.items())),
            "visitors": dict(sorted(self.visitors.items())),
        }

    def model_version(self) -> str | list[str] | None:
        """The one model version every record names, the sorted list when several, else None."""
        versions = sorted(self.versions)
        return versions[0] if len(versions) == 1 else (versions or None)


def build_report(
    records: Iterable[Mapping[str, Any]],
    *,
    source: str | None = None,
    skipped: Iterable[Mapping[str, str]] = (),
    created: dt.datetime | None = None,
) -> dict[str, Any]:
    """The JSON report as a dict.

    ``records`` are per-image results as the workers write them (see the service
    contract); they are sorted by path so two runs over one folder compare equal.
    ``skipped`` lists files that were not sent at all (``{"path", "reason"}``).
    """
    images = sorted((normalise_image(r) for r in records), key=lambda i: i["path"])
    summary = Summary()
    for image in images:
        summary.add(image)
    return _report(images, summary, source=source, skipped=skipped, created=created)


def _report(images: Iterable[Mapping[str, Any]], summary: Summary, *, source: str | None,
            skipped: Iterable[Mapping[str, str]], created: dt.datetime | None) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "created": (created or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds"),
        "source": source,
        "model_version": summary.model_version(),
        "summary": summary.as_dict(),
        "images": images,
        "skipped": [{**dict(s), **path_fields(str(s.get("path", "")))} for s in skipped],
    }


class _SpooledImages:
    """The spool's records in path order, read back one at a time on every iteration."""

    def __init__(self, spool: "ReportSpool") -> None:
        self._spool = spool

    def __len__(self) -> int:
        return len(self._spool)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._spool.images()


class ReportSpool:
    """Image records kept in a temporary file as they arrive, for reports of any size.

    :meth:`add` normalises a worker record, appends it to the spool file and updates the
    counts; memory holds only (path, offset, length) per image (~150 bytes; the records
    themselves were ~1.8 KB each). :meth:`report` gives the report dict whose ``images``
    reads the spool back in path order, each time it is iterated: :func:`write_json` and
    :func:`write_html` stream it. Use as a context manager (the spool file is removed).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._file = tempfile.TemporaryFile(prefix="faec-report-", dir=directory)
        self._index: list[tuple[str, int, int]] = []
        self._end = 0
        self.summary = Summary()

    def __enter__(self) -> "ReportSpool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._index)

    def add(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Spool one worker record; returns it normalised."""
        image = normalise_image(record)
        blob = json.dumps(image, ensure_ascii=False).encode("utf-8")
        self._file.seek(self._end)
        self._file.write(blob)
        self._index.append((image["path"], self._end, len(blob)))
        self._end += len(blob)
        self.summary.add(image)
        return image

    def images(self) -> Iterator[dict[str, Any]]:
        """The spooled records in path order (ties in arrival order)."""
        self._file.flush()
        for _path, offset, length in sorted(self._index):
            self._file.seek(offset)
            yield json.loads(self._file.read(length))

    def report(self, *, source: str | None = None, skipped: Iterable[Mapping[str, str]] = (),
               created: dt.datetime | None = None) -> dict[str, Any]:
        """The report, as :func:`build_report` gives it, with ``images`` read from the spool."""
        return _report(_SpooledImages(self), self.summary, source=source, skipped=skipped, created=created)

    def close(self) -> None:
        self._file.close()


def _json_chunks(report: Mapping[str, Any]) -> Iterator[str]:
    """``json.dumps(report, indent=2)`` in pieces: one piece per image record."""
    yield "{"
    for n, (key, value) in enumerate(report.items()):
        yield ("," if n else "") + "\n  " + json.dumps(key) + ": "
        if key != "images":
            yield json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            continue
        empty = True
        for i, image in enumerate(value):
            empty = False
            yield ("[" if i == 0 else ",") + "\n    " + json.dumps(image, indent=2, ensure_ascii=False).replace("\n", "\n    ")
        yield "[]" if empty else "\n  ]"
    yield "\n}\n"


def write_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as indented UTF-8 JSON, streamed record by record; returns the path."""
    out = Path(path)
    with atomic_writer(out) as fh:
        for piece in _json_chunks(report):
            fh.write(piece.encode("utf-8"))
    return out


# ---- thumbnails -----------------------------------------------------------

def _ascii_label(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; the page shows the exact name as text.
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def thumbnail(image: np.ndarray, faces: Sequence[Mapping[str, Any]], max_side: int = THUMB_MAX_SIDE) -> np.ndarray:
    """A downscaled copy of ``image`` with every face's box and label drawn.

    image: (h, w, 3) uint8 RGB; faces: normalised face records with boxes in
    ``image``'s pixels. Returns (h', w', 3) uint8 RGB with max(h', w') <= max_side.
    Known faces are drawn in green with their name, strangers in red as "unknown".
    """
    import cv2  # imported here so building JSON reports never needs OpenCV

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"thumbnail needs an (h, w, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        thumb = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    else:
        thumb = image.copy()
    th, tw = thumb.shape[:2]
    for number, face in enumerate(faces, start=1):
        x1, y1, x2, y2 = (int(round(v * scale)) for v in face["box"])
        x1, x2 = max(0, min(x1, tw - 1)), max(0, min(x2, tw - 1))
        y1, y2 = max(0, min(y1, th - 1)), max(0, min(y2, th - 1))
        known = face["decision"] == Decision.KNOWN.value
        colour = KNOWN_RGB if known else UNKNOWN_RGB
        cv2.rectangle(thumb, (x1, y1), (x2, y2), colour, 2)
        label = f"{number} " + (_ascii_label(str(face.get("person") or "?")) if known else "unknown")
        (lw, lh), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        ly = y1 - 4 if y1 - lh - base - 4 >= 0 else min(th - 1, y2 + lh + 4)
        cv2.rectangle(thumb, (x1, ly - lh - 2), (min(tw - 1, x1 + lw + 4), ly + base - 1), colour, -1)
        cv2.putText(thumb, label, (x1 + 2, ly - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return thumb


def jpeg_data_uri(image: np.ndarray, quality: int = THUMB_JPEG_QUALITY) -> str:
    """``data:image/jpeg;base64,...`` of an (h, w, 3) uint8 RGB image."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding of a thumbnail failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def default_loader(path: str) -> np.ndarray:
    """The face engine's image reader (EXIF rotation applied), so drawn boxes
    land where the engine found the faces."""
    from faec_rec.faces.image import load_image

    return load_image(path)


# ---- the HTML page --------------------------------------------------------

_CSS = """
body{font:14px system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:.2em 0}.meta{color:#666;margin-bottom:.6em}
h2{font-size:1.1em;margin:1em 0 .3em}.visitor{margin:.3em 0}.vc{width:48px;height:48px;margin:0 2px;vertical-align:middle;border-radius:3px}
.bar{position:sticky;top:0;background:#fafafa;padding:.4em 0;border-bottom:1px solid #ddd;z-index:1}
.bar button{margin-right:.3em;padding:.25em .7em;border:1px solid #bbb;border-radius:4px;background:#fff;cursor:pointer}
.bar button.on{background:#333;color:#fff}
.grid{display:flex;flex-wrap:wrap;gap:10px;margin-top:.8em}
.card{width:372px;background:#fff;border:1px solid #ddd;border-left:6px solid #999;border-radius:4px;padding:6px}
.card.known{border-left-color:rgb(46,160,67)}.card.stranger{border-left-color:rgb(229,57,53)}
.card.error{border-left-color:#8e24aa}.card.no-face{border-left-color:#9e9e9e}
.card img{max-width:360px;max-height:360px;display:block;margin:0 auto}
.path{font-family:monospace;font-size:12px;word-break:break-all;color:#444;margin:4px 0}
ol{margin:2px 0;padding-left:1.6em}.k{color:rgb(30,130,50);font-weight:600}.u{color:rgb(200,40,40);font-weight:600}
.err{color:#8e24aa}.score{color:#666;font-size:12px}
"""

_JS = """
const grid=document.getElementById('grid');let show='all';
function apply(){for(const c of grid.children){c.hidden=!(show==='all'||c.dataset.status===show);}}
document.querySelectorAll('[data-show]').forEach(b=>b.onclick=()=>{show=b.dataset.show;
 document.querySelectorAll('[data-show]').forEach(x=>x.classList.toggle('on',x===b));apply();});
const rank={'stranger':0,'error':1,'no-face':2,'known':3};
document.getElementById('sort').onchange=e=>{const k=e.target.value;const cards=[...grid.children];
 cards.sort((a,b)=>k==='path'?a.dataset.path.localeCompare(b.dataset.path):
  k==='decision'?(rank[a.dataset.status]-rank[b.dataset.status])||a.dataset.path.localeCompare(b.dataset.path):
  k==='score'?(+a.dataset.score)-(+b.dataset.score):(+b.dataset.faces)-(+a.dataset.faces));
 cards.forEach(c=>grid.appendChild(c));};
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _face_item(face: Mapping[str, Any]) -> str:
    score = "" if face.get("score") is None else f' <span class="score">{face["score"]:.3f}</span>'
    if face["decision"] == Decision.KNOWN.value:
        return f'<li><span class="k">{_esc(face.get("person"))}</span>{score}</li>'
    runner = face.get("runner_up")
    hint = f' <span class="score">(closest: {_esc(runner)})</span>' if isinstance(runner, str) and runner else ""
    visitor = f' <span class="score">visitor {_esc(face["visitor"])}</span>' if face.get("visitor") else ""
    return f'<li><span class="u">unknown</span>{visitor}{score}{hint}</li>'


VISITOR_CROP_SIDE = 64
VISITOR_CROPS_SHOWN = 12


def face_crop_uri(image: np.ndarray, box: Sequence[float], side: int = VISITOR_CROP_SIDE) -> str | None:
    """A small JPEG data URI of one face box cut from ``image`` (None when the box is empty)."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    crop = cv2.resize(np.ascontiguousarray(image[y1:y2, x1:x2]), (side, side), interpolation=cv2.INTER_AREA)
    return jpeg_data_uri(crop)


def _visitor_section(groups: Mapping[str, list[str | None]], counts: Mapping[str, int]) -> str:
    """Strangers grouped by visitor: "visitor v-12: 14 photos" with their crops, most photos first."""
    if not counts:
        return ""
    rows = []
    for vid, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        crops = "".join(f'<img class="vc" alt="{_esc(vid)}" src="{uri}">'
                        for uri in groups.get(vid, [])[:VISITOR_CROPS_SHOWN] if uri)
        rows.append(f'<div class="visitor"><b>visitor {_esc(vid)}</b>: {n} photo{"s" if n != 1 else ""} {crops}</div>')
    return '<h2>Strangers by visitor</h2><div class="visitors">' + "".join(rows) + "</div>"


def _card(image: Mapping[str, Any], picture: str | None) -> str:
    status = image_status(image)
    faces = image["faces"]
    # the least certain known face orders a card when sorting by score
    best = min((f["score"] for f in faces if f.get("score") is not None), default=2.0)
    parts = [
        f'<div class="card {status.value}" data-status="{status.value}" data-path="{_esc(image["path"])}" '
        f'data-faces="{len(faces)}" data-score="{best:.4f}">'
    ]
    if picture:
        parts.append(f'<img loading="lazy" alt="{_esc(image["path"])}" src="{picture}">')
    parts.append(f'<div class="path">{_esc(image["path"])}</div>')
    if image.get("error"):
        parts.append(f'<div class="err">error: {_esc(image["error"])}</div>')
    elif not faces:
        parts.append('<div class="score">no face found</div>')
    else:
        parts.append("<ol>" + "".join(_face_item(f) for f in faces) + "</ol>")
    parts.append("</div>")
    return "".join(parts)


def render_html(report: Mapping[str, Any], loader: Callable[[str], np.ndarray] | None = default_loader,
                **kwargs: Any) -> str:
    """The report as one self-contained HTML page (no external assets); the keywords are
    :func:`html_chunks`' (``title``, ``max_side``, ``progress``)."""
    return "".join(html_chunks(report, loader, **kwargs))


def html_chunks(
    report: Mapping[str, Any],
    loader: Callable[[str], np.ndarray] | None = default_loader,
    *,
    title: str = "faec-rec identification report",
    max_side: int = THUMB_MAX_SIDE,
    progress: Callable[[], None] | None = None,
) -> Iterator[str]:
    """The report's self-contained HTML page (no external assets) in pieces: the head, one
    card per image, the tail, so a page of many images is written without being held whole.

    ``loader(path) -> (h, w, 3) uint8 RGB`` reads each image for its thumbnail;
    None leaves thumbnails out. An image the loader cannot read keeps its card
    without a picture. ``progress`` is called once per image (progress bars).
    """
    summary = report["summary"]
    by_status = summary["by_status"]
    buttons = [("all", f"all ({summary['images']})")] + [
        (s.value, f"{s.value} ({by_status.get(s.value, 0)})") for s in
        (ImageStatus.STRANGER, ImageStatus.KNOWN, ImageStatus.NO_FACE, ImageStatus.ERROR)
    ]
    people = ", ".join(f"{_esc(n)} ×{c}" for n, c in summary["people"].items()) or "nobody"
    meta = (
        f"{summary['images']} images, {summary['faces']} faces: {summary['known']} known, "
        f"{summary['unknown']} unknown, {summary['errors']} errors · people: {people}"
    )
    source = f" · source {_esc(report['source'])}" if report.get("source") else ""
    version = f" · model {_esc(report['model_version'])}" if report.get("model_version") else ""
    bar = "".join(
        f'<button data-show="{k}"{" class=on" if k == "all" else ""}>{_esc(label)}</button>' for k, label in buttons
    )
    yield (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><div class=\"meta\">{meta}<br>created {_esc(report.get('created', ''))}{source}{version}</div>"
        f"<div class=\"bar\">show: {bar} sort: <select id=\"sort\"><option value=\"path\">path</option>"
        "<option value=\"decision\">decision (strangers first)</option><option value=\"score\">lowest score first</option>"
        f"<option value=\"faces\">most faces first</option></select></div>"
        "<div class=\"grid\" id=\"grid\">"
    )
    visitor_crops: dict[str, list[str | None]] = {}
    for image in report["images"]:
        picture = None
        if loader is not None and not image.get("error"):
            try:
                pixels = loader(source_path(image))
                picture = jpeg_data_uri(thumbnail(pixels, image["faces"], max_side))
                for face in image["faces"]:
                    vid = face.get("visitor")
                    if vid and len(visitor_crops.setdefault(vid, [])) < VISITOR_CROPS_SHOWN:  # only what the page shows
                        visitor_crops[vid].append(face_crop_uri(pixels, face["box"]))
            except Exception as exc:  # a thumbnail must never sink the report
                log.warning("no thumbnail for %s: %s", image["path"], exc)
        yield _card(image, picture)
        if progress is not None:
            progress()
    yield f"</div>{_visitor_section(visitor_crops, summary.get('visitors') or {})}<script>{_JS}</script></body></html>\n"


def write_html(
    report: Mapping[str, Any],
    path: str | os.PathLike[str],
    loader: Callable[[str], np.ndarray] | None = default_loader,
    **kwargs: Any,
) -> Path:
    """Write :func:`render_html`'s page to ``path``, piece by piece; returns the path."""
    out = Path(path)
    with atomic_writer(out) as fh:
        for piece in html_chunks(report, loader, **kwargs):
            fh.write(piece.encode("utf-8"))
    return out
