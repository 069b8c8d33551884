"""The command line's pure parts: names, file listing, exit codes, help, the demo's judge."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from faec_rec import cli
from faec_rec.demo import judge
from faec_rec.errors import BackendUnavailable, ConfigError, GalleryError, TaskTimeout, UnknownPersonError


@pytest.mark.parametrize("raw, expected", [
    ("Ada Lovelace", "Ada Lovelace"),
    ("  J.R.R. Tolkien ", "J.R.R. Tolkien"),
    ("Zoë", "Zoë"),
    ("O'Brien-Smith", "O'Brien-Smith"),
])
def test_plain_names_are_kept(raw: str, expected: str) -> None:
    assert cli.check_person_name(raw) == expected


@pytest.mark.parametrize("raw, why", [
    ("../../etc/passwd", "path separator"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("..", "only dots"),
    (".", "only dots"),
    ("   ", "empty"),
    ("tab\there", "control"),
    ("x" * 101, "longer than"),
])
def test_names_that_look_like_paths_are_refused(raw: str, why: str) -> None:
    with pytest.raises(cli.CommandFailed, match=why) as info:
        cli.check_person_name(raw)
    assert info.value.exit_code == cli.ExitCode.USAGE


def test_list_images_walks_recursively_and_skips_hidden(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a/x.JPG", "a/y.png", "b.webp", "notes.txt", ".hidden/z.jpg", ".dot.jpg"):
        (tmp_path / name).write_bytes(b"x")
    images, others = cli.list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a/x.JPG", "a/y.png", "b.webp"]
    assert [p.name for p in others] == ["notes.txt"]
    assert cli.list_images(tmp_path / "b.webp") == ([tmp_path / "b.webp"], [])


def test_folder_people_reports_every_problem(tmp_path) -> None:
    for name in ("Ada Lovelace/1.jpg", "Ada Lovelace/2.png", "Empty/readme.md", "bad\\name/1.jpg", ".hidden/1.jpg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "loose.jpg").write_bytes(b"x")
    people, problems = cli.folder_people(tmp_path)
    assert [(n, [p.name for p in fs]) for n, fs in people] == [("Ada Lovelace", ["1.jpg", "2.png"])]
    joined = "\n".join(problems)
    assert "path separator" in joined and "hidden" not in joined
    assert "'Empty': no images" in joined and "loose.jpg" in joined


@pytest.mark.parametrize("exc, code", [
    (BackendUnavailable("down"), cli.ExitCode.BACKEND),
    (TaskTimeout("slow"), cli.ExitCode.BACKEND),
    (ConfigError("bad"), cli.ExitCode.USAGE),
    (UnknownPersonError("who"), cli.ExitCode.USAGE),
    (GalleryError("other"), cli.ExitCode.PARTIAL),
])
def test_errors_map_to_exit_codes(exc: Exception, code: cli.ExitCode) -> None:
    @click.command()
    def boom() -> None:
        raise exc

    group = cli.FaecGroup(commands={"boom": boom})
    result = CliRunner().invoke(group, ["boom"])
    assert result.exit_code == code
    assert result.output.strip().splitlines()[-1].startswith("error: ")


def test_every_command_has_help() -> None:
    cli._register_plugins()
    runner = CliRunner()

    def walk(command: click.Command, path: list[str]) -> None:
        result = runner.invoke(cli.cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(cli.cli, [])
    for name in ("demo", "enrol", "identify", "people", "events", "worker", "beat", "camera", "config"):
        assert name in cli.cli.commands
    assert "Exit codes" in runner.invoke(cli.cli, ["--help"]).output


def test_config_prints_effective_settings(monkeypatch) -> None:
    monkeypatch.setenv("FAEC_GALLERY__MARGIN", "0.05")
    result = CliRunner().invoke(cli.cli, ["config", "--describe"])
    assert result.exit_code == 0
    assert "gallery.margin = 0.05" in result.output
    monkeypatch.setenv("FAEC_REDIS_URL", "redis://:s3cret@db.example:6380/2")
    result = CliRunner().invoke(cli.cli, ["config"])
    assert result.exit_code == 0 and "s3cret" not in result.output and "db.example:6380" in result.output
    monkeypatch.setenv("FAEC_GALLERY__MARGIN", "7")
    result = CliRunner().invoke(cli.cli, ["config"])
    assert result.exit_code == cli.ExitCode.USAGE and "gallery.margin" in result.output


def test_usage_errors_exit_2_without_touching_a_backend(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FAEC_REDIS_URL", "redis://127.0.0.1:1/0")  # would be exit 3 if reached
    runner = CliRunner()
    assert runner.invoke(cli.cli, ["enrol"]).exit_code == 2
    assert runner.invoke(cli.cli, ["enrol", "a/b", str(tmp_path)]).exit_code == 2
    assert runner.invoke(cli.cli, ["enrol", "Ada", "x.jpg", "--folder", str(tmp_path)]).exit_code == 2
    result = runner.invoke(cli.cli, ["identify", str(tmp_path), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "no images" in result.output
    assert runner.invoke(cli.cli, ["events", "--camera", "../x"]).exit_code == 2


def test_unreachable_redis_is_exit_3(monkeypatch) -> None:
    monkeypatch.setenv("FAEC_REDIS_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(cli.cli, ["people", "list"])
    assert result.exit_code == cli.ExitCode.BACKEND and "cannot reach Redis" in result.output


@pytest.mark.parametrize("expect, faces, ok", [
    (("Ada",), [{"person": "Ada", "decision": "known"}], True),
    (("Ada",), [{"person": "Ada", "decision": "known"}, {"person": None, "decision": "unknown"}], True),
    (("Ada",), [{"person": "Bob", "decision": "known"}], False),
    ((None,), [{"person": None, "decision": "unknown"}], True),
    ((None,), [{"person": "Bob", "decision": "known"}], False),
    ((None,), [], False),
    ((), [], True),
    ((), [{"person": None, "decision": "unknown"}], False),
])
def test_demo_judge(expect, faces, ok) -> None:
    assert judge(expect, faces) is ok


def test_camera_specs_accept_ids_and_bare_sources() -> None:
    specs = cli.camera_specs(["door=rtsp://10.0.0.5/s?a=b", "0", "http://cam/x?user=a"], fps=2.0, loop=True)
    assert [(s.camera_id, s.source, s.fps, s.loop) for s in specs] == [
        ("door", "rtsp://10.0.0.5/s?a=b", 2.0, True), ("cam2", "0", 2.0, True), ("cam3", "http://cam/x?user=a", 2.0, True)]


def test_events_start_picks_the_last_n(redis_client, keys) -> None:
    stream = keys.events()
    ids = [redis_client.xadd(stream, {"event": "{}"}).decode() for _ in range(5)]
    assert cli.events_start(redis_client, stream, 2) == ids[2]
    assert cli.events_start(redis_client, stream, 10) == "0-0"
    assert cli.events_start(redis_client, stream, 0) == ids[4]


def test_demo_plan_falls_back_to_the_astronaut(tmp_path, monkeypatch) -> None:
    from faec_rec.demo import demo_plan

    monkeypatch.setenv("FAEC_DEMO_FACES", str(tmp_path / "none"))
    plan = demo_plan(tmp_path)
    assert "astronaut" in plan.description
    assert [n for n, _ in plan.enrol] == ["Eileen Collins"]
    assert all(p.is_file() for _, files in plan.enrol for p in files)
    assert [e for _, e in plan.identify] == [("Eileen Collins",), ("Eileen Collins",), ()]


def test_demo_plan_uses_the_shared_photos(faces_dir, tmp_path, monkeypatch) -> None:
    from faec_rec.demo import demo_plan

    monkeypatch.setenv("FAEC_DEMO_FACES", str(faces_dir))
    plan = demo_plan(tmp_path)
    assert len(plan.enrol) == 5 and len(plan.identify) == 12
    assert any(e == (None,) for _, e in plan.identify) and any(e == () for _, e in plan.identify)
    assert not list(tmp_path.iterdir())  # nothing copied


def test_camera_sources_come_from_a_file_or_the_environment_off_the_command_line(tmp_path) -> None:
    import click

    from faec_rec.cli import camera_sources

    listed = tmp_path / "cameras.txt"
    listed.write_text("# door and lab\ndoor=rtsp://viewer:pw@10.0.0.21:554/s1\n\n  lab=0\n")
    assert camera_sources((), listed, {}) == ["door=rtsp://viewer:pw@10.0.0.21:554/s1", "lab=0"]
    env = {"FAEC_CAMERA_SOURCES": "door=rtsp://viewer:pw@10.0.0.21:554/s1,lab=0\nyard=clip.mp4"}
    assert camera_sources((), None, env) == ["door=rtsp://viewer:pw@10.0.0.21:554/s1", "lab=0", "yard=clip.mp4"]
    assert camera_sources(("a=0",), None, env) == ["a=0"]  # arguments win over the environment
    with pytest.raises(click.UsageError, match="not both"):
        camera_sources(("a=0",), listed, {})
    with pytest.raises(click.UsageError, match="no camera source"):
        camera_sources((), None, {})
    with pytest.raises(click.UsageError, match="cannot read"):
        camera_sources((), tmp_path / "missing.txt", {})


def test_worker_without_a_redis_url_is_refused_inside_a_container(monkeypatch, tmp_path) -> None:
    from click.testing import CliRunner

    from faec_rec import cli as cli_module

    monkeypatch.delenv("FAEC_REDIS_URL", raising=False)
    monkeypatch.setenv("FAEC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # what every pod has
    assert cli_module.in_container()
    out = CliRunner().invoke(cli_module.cli, ["worker"])
    assert out.exit_code == 2 and "FAEC_REDIS_URL is not set" in out.output
    assert not (tmp_path / "redis").exists()  # no private Redis was started
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".containerenv").write_text("")
    assert cli_module.in_container(tmp_path)
