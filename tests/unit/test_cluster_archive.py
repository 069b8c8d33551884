"""Gallery archives against the real Redis: round trip, refusal of damaged and
foreign archives, merge, and consistency while people are being enrolled."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from faec_rec.cluster.archive import FORMAT_VERSION, export_gallery, import_gallery
from faec_rec.config import load_settings
from faec_rec.errors import ArchiveError
from faec_rec.index.events import EventLog
from faec_rec.index.store import NewTemplates, Store
from faec_rec.keys import Keys


def _templates(rng: np.random.Generator, n: int, tag: str, crops: bool = True) -> NewTemplates:
    feats = rng.normal(size=(n, 128)).astype(np.float32)
    return NewTemplates.check(feats, [f"{tag}-{i}.jpg" for i in range(n)], [f"{tag}-h{i}" for i in range(n)],
                              None, [f"jpeg-{tag}-{i}".encode() for i in range(n)] if crops else None)


@pytest.fixture
def target(redis_client, tmp_path: Path):
    keys = Keys("t" + uuid.uuid4().hex[:10])
    yield Store(redis_client, keys, tmp_path / "target")
    for key in redis_client.scan_iter(match=f"{keys.prefix}:*", count=1000):
        redis_client.delete(key)


def _dump(store: Store) -> dict[str, dict]:
    """name -> {image hash: (features bytes, crop bytes)} of every person."""
    out = {}
    for person in store.people():
        feats = store.fetch_features(list(person.template_ids))
        entry = {}
        for tid in person.template_ids:
            chash, crop = (v.decode() for v in store.client.hmget(store.keys.template(tid), ["hash", "crop"]))
            entry[chash] = (feats[tid].tobytes(), (store.data_dir / crop).read_bytes() if crop else None)
        out[person.name] = entry
    return out


def _export(store: Store) -> tuple[bytes, dict]:
    buf = io.BytesIO()
    summary = export_gallery(store.client, store.keys, store.data_dir, buf, load_settings())
    return buf.getvalue(), summary.to_json()


def test_round_trip_keeps_people_features_and_crops(redis_client, keys, tmp_path, target, rng) -> None:
    source = Store(redis_client, keys, tmp_path / "source")
    for i in range(5):
        source.enrol(f"Person {i}", _templates(rng, 3, f"p{i}"), version="base", metadata={"i": i})
    data, summary = _export(source)
    assert summary["people"] == 5 and summary["templates"] == 15 and summary["crops"] == 15
    result = import_gallery(target, io.BytesIO(data), load_settings())
    assert result.people_created == 5 and result.templates_added == 15
    assert _dump(target) == _dump(source)
    assert target.person("Person 3").metadata == {"i": 3}
    # every restored person is announced on the gallery stream, so replicas follow
    assert len(EventLog(target.client, target.keys).read("0-0")) == 5
    with pytest.raises(ArchiveError, match="--merge"):
        import_gallery(target, io.BytesIO(data), load_settings())
    merged = import_gallery(target, io.BytesIO(data), load_settings(), merge=True)
    assert merged.templates_added == 0 and merged.templates_skipped == 15 and merged.people_merged == 5
    assert _dump(target) == _dump(source)


def test_damaged_and_foreign_archives_are_refused(redis_client, keys, tmp_path, target, rng) -> None:
    source = Store(redis_client, keys, tmp_path / "source")
    source.enrol("Ada", _templates(rng, 2, "ada"), version="base")
    data, _ = _export(source)
    # a flipped byte inside a member: the gzip CRC or our sha256 catches it
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(ArchiveError, match="damaged|checksum|truncated"):
        import_gallery(target, io.BytesIO(bytes(damaged)), load_settings())
    with pytest.raises(ArchiveError, match="damaged|truncated|manifest"):
        import_gallery(target, io.BytesIO(data[: len(data) // 2]), load_settings())
    # a member whose content changed but whose tar is intact: only the manifest sees it
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            members[m.name] = tar.extractfile(m).read()
    first_people = next(n for n in members if n.startswith("people/"))
    members[first_people] = members[first_people].replace(b"Ada", b"Eve")
    with pytest.raises(ArchiveError, match="checksum"):
        import_gallery(target, io.BytesIO(_tar(members)), load_settings())
    foreign = dict(members)
    foreign["format.json"] = json.dumps({"format": "faec-rec-gallery", "version": FORMAT_VERSION + 1}).encode()
    with pytest.raises(ArchiveError, match=f"version {FORMAT_VERSION + 1}"):
        import_gallery(target, io.BytesIO(_tar(foreign)), load_settings())
    with pytest.raises(ArchiveError, match="faec-rec-gallery archive"):
        import_gallery(target, io.BytesIO(_tar({"hello.txt": b"hi"})), load_settings())
    assert target.people() == []  # nothing was written by any refused import


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_export_is_consistent_while_people_are_enrolled(redis_client, keys, tmp_path, target, rng) -> None:
    """People enrolled, given templates and forgotten during the export: the archive
    equals the gallery at its stream id (each person whole, none half-written)."""
    source = Store(redis_client, keys, tmp_path / "source")
    for i in range(300):
        source.enrol(f"Base {i}", _templates(rng, 2, f"b{i}", crops=False), version="base")
    stop = threading.Event()
    history: list[tuple[str, str, int]] = []  # (stream id after the change, name, templates now; -1 forgotten)

    def churn() -> None:
        local = np.random.default_rng(7)
        n = 0
        while not stop.is_set():
            name = f"Live {n}"
            r = source.enrol(name, _templates(local, 2, f"l{n}", crops=False), version="base")
            history.append((EventLog.last_id_from(source.events.last_id()), name, 2))
            source.add_templates(r.person_id, _templates(local, 1, f"x{n}", crops=False), version="base")
            history.append((EventLog.last_id_from(source.events.last_id()), name, 3))
            if n % 3 == 0 and n < 300:
                source.forget(source.resolve(f"Base {n}"))
                history.append((EventLog.last_id_from(source.events.last_id()), f"Base {n}", -1))
            n += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        data, summary = _export(source)
    finally:
        stop.set()
        thread.join()
    assert history, "no change happened during the export"
    assert summary["rounds"] >= 2, summary  # the churn made people dirty: patch rounds ran
    at = tuple(int(x) for x in summary["stream_id"].split("-"))
    expected: dict[str, int] = {f"Base {i}": 2 for i in range(300)}
    for eid, name, count in history:
        if tuple(int(x) for x in eid.split("-")) <= at:
            if count < 0:
                expected.pop(name, None)
            else:
                expected[name] = count
    import_gallery(target, io.BytesIO(data), load_settings())
    got = {p.name: len(p.template_ids) for p in target.people()}
    assert got == expected


# ---- visitors in the archive -------------------------------------------------------------

def _visitors_dump(client, keys: Keys, data_dir: Path) -> dict:
    """Everything a backup must keep of visitors: each visitor's record and faces, and each
    face's stored fields, features and crop bytes."""
    from faec_rec.visitors.store import VisitorStore

    store = VisitorStore(client, keys, data_dir)
    groups = {}
    for vid in store.visitor_ids():
        rec = store.visitor_record(vid)
        groups[vid] = {k: rec.get(k) for k in ("faces", "person", "manual", "cover", "first_seen", "last_seen",
                                               "cameras")}
    faces = {}
    for row in store.face_records(store.all_face_ids(), with_features=True):
        crop = row.pop("crop")
        row["features"] = row["features"].tobytes()
        row["crop"] = (data_dir / crop).read_bytes() if crop else None
        row.pop("id")
        faces[row["source"]] = row
    return {"groups": groups, "faces": faces}


def _people_visitors(rng, source_dir: Path, redis_client, keys: Keys):
    """Three synthetic strangers (six faces each) and one face that fails the quality gate,
    joined through the service; one visitor named Ada, one split by hand."""
    from faec_rec.config import VisitorsConfig
    from faec_rec.visitors.service import Visitors
    from tests.unit.test_visitors import _face, people

    feats, labels = people(rng, 3, 6)
    service = Visitors(redis_client, keys, VisitorsConfig(), source_dir)
    t0 = time.time() - 1000  # within the retention window (an older face would expire on the next join)
    joined = [service.join(_face(f"f{i}", f, at=t0 + i)) for i, f in enumerate(feats)]
    service.join(_face("blurry", feats[0] + 0.01, good=False))
    by_label = {int(labels[i]): j.visitor for i, j in enumerate(joined)}
    assert len(set(by_label.values())) == 3 and None not in by_label.values()
    return service, by_label


def test_round_trip_keeps_visitors_names_and_manual_splits(redis_client, keys, tmp_path, target, rng) -> None:
    from faec_rec.config import VisitorsConfig
    from faec_rec.visitors.service import Visitors

    source = Store(redis_client, keys, tmp_path / "source")
    service, by_label = _people_visitors(rng, tmp_path / "source", redis_client, keys)
    ada = source.enrol("Ada", _templates(rng, 2, "ada"), version="base")
    service.mark_named(by_label[0], ada.person_id)
    faces_of_1 = service.store.visitor_record(by_label[1])["faces"]
    split_off = service.split(by_label[1], faces_of_1[:2])  # both halves are "manual" now
    before = _visitors_dump(redis_client, keys, tmp_path / "source")
    assert before["groups"][split_off]["manual"] == "1" and before["groups"][by_label[0]]["person"] == ada.person_id

    data, summary = _export(source)
    assert (summary["visitors"], summary["unknown_faces"], summary["unknown_crops"]) == (4, 19, 19)
    # a worker of the target deployment is running before the restore: its replica follows it
    worker = Visitors(redis_client, target.keys, VisitorsConfig(), target.data_dir)
    assert worker.replica.size == 0
    result = import_gallery(target, io.BytesIO(data), load_settings())
    assert (result.visitors_created, result.unknown_faces_added) == (4, 19)
    after = _visitors_dump(redis_client, target.keys, target.data_dir)
    assert after == before  # same ids, faces, features, crops, names, manual flags, times
    worker.sync()
    assert worker.replica.digest() == service.replica.digest()
    # ids restored are never handed out again
    stranger = rng.normal(size=128).astype(np.float32)
    from tests.unit.test_visitors import _face

    fresh = worker.join(_face("new", stranger))
    assert fresh.visitor == f"v-{int(redis_client.get(keys.visitor_counter())) + 1}"  # the source's next id

    # Importing the same archive again with --merge adds nothing.
    again = import_gallery(target, io.BytesIO(data), load_settings(), merge=True)
    assert (again.unknown_faces_added, again.unknown_faces_skipped, again.visitors_created) == (0, 19, 0)
    worker.sync()
    assert {k: v for k, v in _visitors_dump(redis_client, target.keys, target.data_dir)["groups"].items()
            if k != fresh.visitor} == before["groups"]
    # A face forgotten here since comes back with --merge into the visitor holding its siblings.
    home = worker.face("f3")["visitor"]
    worker.forget_faces(["f3"])
    back = import_gallery(target, io.BytesIO(data), load_settings(), merge=True)
    assert (back.unknown_faces_added, back.visitors_joined, back.visitors_created) == (1, 1, 0)
    worker.sync()
    assert worker.face("f3")["visitor"] == home and worker.replica.visitor_of("f3") == home
    assert (target.data_dir / worker.face("f3")["crop"]).read_bytes() == (tmp_path / "source" / "unknown" / "f3.jpg").read_bytes()


def test_a_version_1_archive_without_visitors_is_still_read(redis_client, keys, tmp_path, target, rng) -> None:
    source = Store(redis_client, keys, tmp_path / "source")
    source.enrol("Ada", _templates(rng, 2, "ada"), version="base")
    _people_visitors(rng, tmp_path / "source", redis_client, keys)
    data, _ = _export(source)
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if not m.name.startswith("visitors/"):
                members[m.name] = tar.extractfile(m).read()
    fmt, manifest = json.loads(members.pop("format.json")), json.loads(members.pop("manifest.json"))
    fmt["version"] = 1
    manifest["members"] = {k: v for k, v in manifest["members"].items() if not k.startswith("visitors/")}
    import hashlib

    members = {"format.json": json.dumps(fmt).encode(), **members}
    manifest["members"]["format.json"] = {"sha256": hashlib.sha256(members["format.json"]).hexdigest(),
                                          "size": len(members["format.json"])}
    members["manifest.json"] = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    result = import_gallery(target, io.BytesIO(buf.getvalue()), load_settings())
    assert (result.people_created, result.visitors_created, result.unknown_faces_added) == (1, 0, 0)
    assert target.person("Ada").name == "Ada" and not redis_client.exists(target.keys.unknown_faces())


def test_merge_gives_archived_visitors_new_ids_and_maps_their_names(redis_client, keys, tmp_path, rng) -> None:
    from tests.unit.test_visitors import _face, people

    source = Store(redis_client, keys, tmp_path / "source")
    service, by_label = _people_visitors(rng, tmp_path / "source", redis_client, keys)
    ada = source.enrol("Ada", _templates(rng, 2, "ada"), version="base")
    service.mark_named(by_label[2], ada.person_id)
    data, _ = _export(source)

    other = Keys("t" + uuid.uuid4().hex[:10])
    try:
        dest = Store(redis_client, other, tmp_path / "dest")
        local_ada = dest.enrol("ada", _templates(rng, 1, "ada-here"), version="base")
        from faec_rec.config import VisitorsConfig
        from faec_rec.visitors.service import Visitors

        here = Visitors(redis_client, other, VisitorsConfig(), tmp_path / "dest")
        feats, _ = people(np.random.default_rng(99), 1, 4)
        assert {here.join(_face(f"h{i}", f)).visitor for i, f in enumerate(feats)} == {"v-1"}
        with pytest.raises(ArchiveError, match="--merge"):
            import_gallery(dest, io.BytesIO(data), load_settings())
        result = import_gallery(dest, io.BytesIO(data), load_settings(), merge=True)
        assert (result.visitors_created, result.unknown_faces_added) == (3, 19)
        rows = {r["id"]: r for r in here.list(limit=0)}
        assert rows["v-1"]["faces"] == 4 and rows["v-1"]["person_id"] is None  # the target's own, untouched
        restored = sorted(set(rows) - {"v-1"}, key=lambda v: int(v[2:]))
        assert restored == ["v-2", "v-3", "v-4"]  # new ids after the target's, none reused
        named = [r for r in rows.values() if r["person_id"]]
        # Ada's visitor is named as the target's Ada (people merge by name), not the archive's id
        assert [(r["person_id"], r["faces"]) for r in named] == [(local_ada.person_id, 6)]
        here.sync()
        assert sorted(len(fs) for fs in here.replica.groups().values()) == [4, 6, 6, 7]  # the blurry face joined a visitor, never seeded one
    finally:
        for key in redis_client.scan_iter(match=f"{other.prefix}:*", count=1000):
            redis_client.delete(key)
