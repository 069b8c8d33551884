"""Where camera frames come from: a USB index, an RTSP/HTTP URL or a video file.

:func:`parse_source` turns the user's string into what ``cv2.VideoCapture`` takes;
:class:`VideoSource` opens it and yields frames sampled at a target rate:

* live sources (USB, URL) are read as fast as they deliver, so the driver's buffer
  never holds stale frames, and a frame is kept whenever the wall clock says one is
  due;
* files are sampled on their own timeline (frame index / file fps), so the same
  frames are kept however fast the machine decodes; with ``realtime=True`` the
  source also waits until each kept frame's moment, replaying the file like a
  camera. ``loop=True`` starts a file again at its end.

Frames are BGR ``(h, w, 3) uint8`` arrays as OpenCV reads them.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from faec_rec.errors import SourceError

log = logging.getLogger(__name__)

# FFmpeg waits 30 s by default on a dead URL; a camera producer retries instead.
OPEN_TIMEOUT_MS = 5_000
READ_TIMEOUT_MS = 5_000

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

# scheme://<anything up to the last @ before the host>@  ->  scheme://***@
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#]*@")
# ...?user=x&password=y (some HTTP/ONVIF cameras take them in the query)
_QUERY_SECRET = re.compile(r"(?P<name>[?&;](?:user(?:name)?|pass(?:word|wd)?|pwd|token|auth|key)=)[^&;#\s]*",
                           re.IGNORECASE)


def mask_source(text: str) -> str:
    """``text`` with every URL's ``user:pass@`` (or ``user@``) and credential query
    values replaced by ``***``: ``rtsp://admin:pw@10.0.0.5/s`` -> ``rtsp://***@10.0.0.5/s``."""
    return _QUERY_SECRET.sub(r"\g<name>***", _USERINFO.sub(r"\g<scheme>***@", str(text)))


class SourceKind(str, Enum):
    USB = "usb"
    URL = "url"
    FILE = "file"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: ``target`` is the int device index, URL or file path."""

    kind: SourceKind
    target: int | str

    def __str__(self) -> str:
        """Shown in logs, errors and a camera's ``last_error``: credentials masked."""
        return f"{self.kind.value}:{mask_source(str(self.target))}"


def parse_source(source: str | int) -> SourceSpec:
    """``"0"`` or ``0`` -> USB device 0; ``"rtsp://..."``/``"http(s)://..."`` -> URL;
    anything else -> a video file path (which need not exist yet: opening it is
    what fails, and is retried, like any camera)."""
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        return SourceSpec(SourceKind.USB, int(source))
    if not isinstance(source, str) or not source.strip():
        raise SourceError(f"camera source {source!r}: give a USB index, an rtsp:// or http:// URL, or a video file path")
    text = source.strip()
    if _URL.match(text):
        scheme = text.split("://", 1)[0].lower()
        if scheme == "file":
            return SourceSpec(SourceKind.FILE, str(Path(text[len("file://"):]).expanduser()))
        return SourceSpec(SourceKind.URL, text)
    return SourceSpec(SourceKind.FILE, str(Path(text).expanduser()))


class FrameSampler:
    """Keeps one frame per ``1 / fps`` seconds of a timeline (file or wall clock).

    ``due(ts)`` says whether a frame at time ``ts`` (seconds) should be kept. The
    next slot advances by whole periods so the long-run rate is exactly ``fps``;
    after a stall longer than a period it restarts from ``ts`` instead of bursting.
    """

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise SourceError(f"fps must be > 0, got {fps}")
        self.period = 1.0 / fps
        self.next_ts: float | None = None

    def due(self, ts: float) -> bool:
        # A small tolerance: 29.97 fps sampled at 10 fps must not skip a slot
        # because a frame lands a microsecond early.
        eps = 1e-6
        if self.next_ts is None:
            self.next_ts = ts + self.period
            return True
        if ts + eps < self.next_ts:
            return False
        self.next_ts += self.period
        if self.next_ts <= ts:
            self.next_ts = ts + self.period
        return True


class VideoSource:
    """One camera or file, opened on :meth:`open`, read with :meth:`read`.

    ``fps``: frames per second kept; ``loop``: restart a file at its end;
    ``realtime``: pace a file to its own timeline (live sources are always real time);
    ``stop``: an event that interrupts pacing waits.
    """

    def __init__(
        self,
        source: str | int | SourceSpec,
        fps: float,
        loop: bool = False,
        realtime: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        self.spec = source if isinstance(source, SourceSpec) else parse_source(source)
        self.sampler = FrameSampler(fps)
        self.loop = loop
        self.realtime = realtime
        self.stop = stop or threading.Event()
        self._cap: cv2.VideoCapture | None = None
        self._file_fps = 0.0
        self._index = 0  # frames decoded from the file so far, over all loops
        self._wall0 = 0.0
        self.finished = False

    @property
    def is_open(self) -> bool:
        return self._cap is not None

    @property
    def is_file(self) -> bool:
        return self.spec.kind is SourceKind.FILE

    def open(self) -> None:
        """Open the device, stream or file; raises :class:`SourceError` if it does not answer."""
        self.close()
        if self.is_file and not Path(str(self.spec.target)).is_file():
            raise SourceError(f"{self.spec}: no such video file")
        if self.spec.kind is SourceKind.USB:
            cap = cv2.VideoCapture(int(self.spec.target))
        else:
            cap = cv2.VideoCapture(
                str(self.spec.target), cv2.CAP_FFMPEG,
                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS],
            )
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.spec}: cannot open (not reachable, wrong address or unsupported format)")
        self._cap = cap
        if self.is_file:
            fps = cap.get(cv2.CAP_PROP_FPS)
            # A file that does not state its rate is taken as 25 fps.
            self._file_fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
        log.info("opened %s", self.spec)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next kept frame and its capture time (unix seconds).

        Returns None when a file without ``loop`` has ended (``finished`` is set) or
        when ``stop`` is set; raises :class:`SourceError` when a camera stops
        answering (the caller reopens).
        """
        if self._cap is None:
            raise SourceError(f"{self.spec}: read before open")
        while not self.stop.is_set():
            if self.is_file:
                frame = self._next_file_frame(self._cap)
                if frame is None:
                    return None
                return frame, time.time()
            ok = self._cap.grab()
            if not ok:
                raise SourceError(f"{self.spec}: stopped sending frames")
            if not self.sampler.due(time.monotonic()):
                continue
            ok, image = self._cap.retrieve()
            if not ok or image is None:
                raise SourceError(f"{self.spec}: a frame could not be decoded")
            return image, time.time()
        return None

    def _next_file_frame(self, cap: cv2.VideoCapture) -> np.ndarray | None:
        while not self.stop.is_set():
            ts = self._index / self._file_fps
            if not cap.grab():
                if self._index == 0:
                    raise SourceError(f"{self.spec}: the file holds no readable frame")
                if not self.loop:
                    self.finished = True
                    return None
                # Start again: the timeline continues, so sampling and pacing stay even.
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                if not cap.grab():
                    # Some containers cannot seek: reopen instead.
                    cap.release()
                    cap = self._cap = cv2.VideoCapture(str(self.spec.target))
                    if not cap.grab():
                        raise SourceError(f"{self.spec}: cannot restart the file")
            if self._index == 0:
                # The replay's clock starts with its first frame, not at open().
                self._wall0 = time.monotonic()
            self._index += 1
            if not self.sampler.due(ts):
                continue
            if self.realtime:
                wait = self._wall0 + ts - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return None
            ok, image = cap.retrieve()
            if not ok or image is None:
                # One damaged frame in a file is skipped; the next slot takes a later frame.
                log.warning("%s: frame %d could not be decoded; skipped", self.spec, self._index - 1)
                self.sampler.next_ts = ts
                continue
            return image
        return None


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` (h, w, 3) shrunk so its larger side is at most ``max_side`` pixels (area filter)."""
    h, w = image.shape[:2]
    side = max(h, w)
    if side <= max_side:
        return image
    scale = max_side / side
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR ``(h, w, 3) uint8`` image at ``quality`` (10-100)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SourceError(f"JPEG encoding failed for a {image.shape} frame")
    return buf.tobytes()
