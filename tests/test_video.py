"""Videos as inputs of `clip classify`, `clip sort` and the store: shots with times and labels, one record shape,
frames kept in the store, bad videos as one-line records (decoding itself: test_video_decode.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_helpers import cli
from video_helpers import make_audio, make_video

LABELS = "red circle,blue square,green triangle,yellow star"
# 0-4 s a red circle, 4-9 s a blue square, 9-12 s a green triangle: the changes at 4 and 9 s
SCENES = [(4, ("red", "circle")), (5, ("blue", "square")), (3, ("green", "triangle"))]
CHANGES = [0.0, 4.0, 9.0]
TRUTH = ["red circle", "blue square", "green triangle"]


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("videos") / "clip.mp4", SCENES, size=(96, 72))


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def rounded(found: list[dict], leave_out: tuple[str, ...] = ()) -> list[dict]:
    """Records with scores to 4 places (a stored embedding is read back as float16) and some keys left out."""
    return [{k: ([{**p, "score": round(p["score"], 4)} for p in v] if k == "predictions" else v)
             for k, v in r.items() if k not in leave_out} for r in found]


@pytest.mark.parametrize("every", [1.0, 2.0, 0.7])
def test_shots_are_found_within_one_sampling_interval_with_the_right_labels(clip_mp4, every):
    result = cli("classify", clip_mp4, "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "1", "--every", every)
    assert result.exit_code == 0, result.output
    video, *shots = records(result)
    assert video["path"] == str(clip_mp4) and video["start"] == 0.0 and video["end"] == pytest.approx(12.0, abs=0.1)
    assert video["shots"] == len(shots) == 3
    assert [shot["shot"] for shot in shots] == [1, 2, 3]
    assert [shot["predictions"][0]["label"] for shot in shots] == TRUTH
    for shot, change in zip(shots, CHANGES):
        assert shot["path"] == str(clip_mp4)
        assert abs(shot["start"] - change) <= every, (shot, change)
    assert [shot["end"] for shot in shots[:-1]] == [shot["start"] for shot in shots[1:]]  # shots tile the video
    assert shots[-1]["end"] == video["end"]
    # the video's own record: how long each label was a shot's answer, longest first
    assert list(video["time"]) == ["blue square", "red circle", "green triangle"]
    assert sum(video["time"].values()) == pytest.approx(video["end"])
    for label, seconds in video["time"].items():
        assert seconds == pytest.approx(sum(s["end"] - s["start"] for s in shots
                                            if s["predictions"][0]["label"] == label))


def test_frames_evenly_spaced_and_a_cap(clip_mp4):
    four = records(cli("classify", clip_mp4, "-m", "demo", "-l", LABELS, "-f", "jsonl", "--frames", "4"))
    # the middles of 4 equal parts: 1.5, 4.5, 7.5, 10.5 s; shots change halfway between two frames
    assert [(s["start"], s["end"]) for s in four[1:]] == [(0.0, 3.0), (3.0, 9.0), (9.0, 12.0)]
    capped = records(cli("classify", clip_mp4, "-m", "demo", "-l", LABELS, "-f", "jsonl", "--every", "0.1",
                         "--max-frames", "6"))  # 121 times asked, 6 kept: every 2 s
    assert [s["start"] for s in capped[1:]] == [0.0, 3.0, 9.0]
    for every in ("1", "2"):  # 2 is the default's value: given, it still clashes
        both = cli("classify", clip_mp4, "-m", "demo", "-l", LABELS, "--every", every, "--frames", "4")
        assert both.exit_code == 2 and "--every and --frames cannot be used together" in both.stderr
    for bad, message in ((("--every", "0"), "--every must be"), (("--max-frames", "0"), "--max-frames must be")):
        result = cli("classify", clip_mp4, "-m", "local-dir:/nonexistent", "-l", LABELS, *bad)
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output, bad


def test_one_record_shape_in_json_csv_and_the_table(clip_mp4, tmp_path):
    from clipcli.results import read_csv_records

    as_json = json.loads(cli("classify", clip_mp4, "-m", "demo", "-l", LABELS, "-f", "json", "-k", "2").stdout)
    results = as_json["results"]
    assert [set(r) for r in results] == [{"path", "start", "end", "shots", "time", "predictions"}] + \
        [{"path", "shot", "start", "end", "predictions"}] * 3
    assert all(len(r["predictions"]) == 2 for r in results)
    as_csv = cli("classify", clip_mp4, "-m", "demo", "-l", LABELS, "-f", "csv", "-k", "2")
    assert as_csv.stdout.splitlines()[0] == "path,rank,label,score,error_type,error_message,shot,start,end"
    parsed = read_csv_records(as_csv.stdout)
    assert [{k: v for k, v in r.items() if k not in ("shots", "time")} for r in results] == parsed
    table = cli("classify", clip_mp4, "-m", "demo", "-l", LABELS, "-k", "1", "--every", "1",
                "-o", tmp_path / "table.txt")
    text = " ".join((tmp_path / "table.txt").read_text().split())  # titles wrap at 100 columns in a file
    assert table.exit_code == 0
    # frames at 3 s and 4 s differ: the shot changes halfway, at 3.5 s (0:03.5)
    assert "clip.mp4 video 0:12, 3 shots" in text
    assert "blue square 0:05 · red circle 0:03.5 · green triangle 0:03.5" in text
    assert "shot ┃ time ┃ label ┃ probability" in text
    assert "1 │ 0:00-0:03.5 │ red circle │ 1.0000" in text and "3 │ 0:08.5-0:12 │ green triangle │" in text


def test_videos_and_photos_together_from_a_folder_with_python(clip_mp4, tmp_path):
    import shutil

    from clipcli import classify
    from clipcli.demo import shapes

    folder = tmp_path / "roll"
    folder.mkdir()
    shutil.copy(clip_mp4, folder / "b.MOV.mp4")
    shapes.draw_pil("yellow", "star", size=64, seed=1).save(folder / "a.png")
    shapes.draw_pil("red", "circle", size=64, seed=2).save(folder / "c.jpg")
    found = classify([str(folder)], ["red circle", "blue square", "green triangle", "yellow star"], model="demo")
    assert [(os.path.basename(r["path"]), r.get("shot")) for r in found] == [
        ("a.png", None), ("b.MOV.mp4", None), ("b.MOV.mp4", 1), ("b.MOV.mp4", 2), ("b.MOV.mp4", 3), ("c.jpg", None)]
    assert [r["predictions"][0]["label"] for r in found if "start" not in r] == ["yellow star", "red circle"]


def test_the_store_keeps_frames_skips_unchanged_videos_and_adds_only_missing_times(clip_mp4, tmp_path):
    import duckdb

    video = tmp_path / "v.mp4"
    video.write_bytes(clip_mp4.read_bytes())
    store = tmp_path / "store"
    args = ("classify", video, "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "1", "--store", store)
    first = cli(*args, "--every", "2")
    assert "0 already stored, 6 encoded" in first.stderr
    again = cli(*args, "--every", "2")
    assert "6 already stored, 0 encoded" in again.stderr and rounded(records(again)) == rounded(records(first))
    denser = cli(*args, "--every", "1")  # 0, 2, ..., 10 are there: 1, 3, ..., 11 are encoded
    assert "6 already stored, 6 encoded" in denser.stderr
    rows = duckdb.sql(f"select split_part(path, '#t=', 1) as video, cast(split_part(path, '#t=', 2) as double) "
                      f"as t from read_parquet('{store}/**/*.parquet') order by t").fetchall()
    assert rows == [(str(video), float(t)) for t in range(12)]  # a plain dataset: frames with their time
    # the whole store, scored without decoding anything: the same shots as from the file
    whole = cli("classify", "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "1", "--store", store)
    assert rounded(records(whole), ("path",)) == rounded(records(denser), ("path",))
    # a changed video is sampled again: every frame re-encoded, none kept twice
    make_video(video, list(reversed(SCENES)), size=(96, 72))
    changed = cli(*args, "--every", "1")
    assert "0 already stored, 12 encoded" in changed.stderr
    assert [s["predictions"][0]["label"] for s in records(changed)[1:]] == list(reversed(TRUTH))
    assert duckdb.sql(f"select count(*) from read_parquet('{store}/**/*.parquet')").fetchall() == [(12,)]
    info = json.loads(cli("store", "info", store, "-f", "json").stdout)
    assert (info["images"], info["videos"], info["video_frames"], info["errors"]) == (0, 1, 12, 0)


def test_an_unchanged_stored_video_is_not_decoded_again(clip_mp4, tmp_path, monkeypatch):
    from clipcli import classify, video

    store = tmp_path / "store"
    decoded = []
    real = video.VideoReader._next_frame
    monkeypatch.setattr(video.VideoReader, "_next_frame", lambda self: decoded.append(1) or real(self))
    classify([str(clip_mp4)], ["red circle", "blue square"], model="demo", store=store)
    assert len(decoded) > 6  # the first run decodes its samples
    decoded.clear()
    again = classify([str(clip_mp4)], ["red circle", "blue square"], model="demo", store=store)
    assert decoded == [] and again[0]["shots"] == 3  # the rerun reads the header only


def test_sort_files_a_video_by_its_own_label_and_undo_restores_it(clip_mp4, tmp_path):
    import hashlib

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    video = inbox / "holiday.mp4"
    video.write_bytes(clip_mp4.read_bytes())
    before = hashlib.sha256(video.read_bytes()).hexdigest()
    into, journal = tmp_path / "sorted", tmp_path / "journal.jsonl"
    result = cli("sort", inbox, "-m", "demo", "-l", LABELS, "--into", into, "--mode", "move", "--manifest", journal,
                 "-f", "jsonl", "--min-score", "0")
    assert result.exit_code == 0, result.output
    (operation,) = records(result)  # one operation for the video, none for its shots
    assert operation["label"] == "blue square" and not video.exists()  # 5 of its 12 s
    assert (into / "blue square" / "holiday.mp4").is_file()
    assert cli("sort", "--undo", journal).exit_code == 0
    assert hashlib.sha256(video.read_bytes()).hexdigest() == before


def test_bad_videos_are_one_line_records_and_the_rest_goes_on(clip_mp4, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mov").write_text("not a video at all\n")
    make_audio(folder / "voice.mkv")
    cut = clip_mp4.read_bytes()
    (folder / "cut.mp4").write_bytes(cut[: len(cut) // 2])  # its index (moov) is at the end: gone
    os.mkfifo(folder / "pipe.mp4")
    (folder / "good.mp4").write_bytes(cut)
    result = subprocess.run([sys.executable, "-m", "clipcli", "classify", str(folder), "-m", "demo", "-l", LABELS,
                             "-f", "jsonl", "-k", "1", "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    found = {os.path.basename(r["path"]): r for r in reversed(records(result))}  # a video's own record: its first
    errors = {name: r["error"]["type"] for name, r in found.items() if "error" in r}
    assert errors == {"empty.mp4": "not_a_video", "notes.mov": "not_a_video", "voice.mkv": "no_video_stream",
                      "cut.mp4": "incomplete", "pipe.mp4": "not_a_file"}
    assert found["good.mp4"]["shots"] == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 5 and all(line.startswith("error: ") and str(folder) in line for line in lines), lines
    assert "Traceback" not in result.stderr


def test_damage_midway_keeps_the_frames_before_it_with_a_warning(tmp_path):
    video = make_video(tmp_path / "long.mkv", SCENES, size=(96, 72), codec="mpeg4", gop=10)
    data = bytearray(video.read_bytes())
    middle = int(len(data) * 0.7)
    data[middle:middle + 4000] = os.urandom(4000)
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(bytes(data))
    result = cli("classify", damaged, "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "1", "--every", "1")
    video_record, *shots = records(result)
    assert "error" not in video_record and video_record["warnings"], video_record
    assert [s["predictions"][0]["label"] for s in shots][:2] == TRUTH[:2]  # the frames before the damage count


def test_other_applies_to_shots_and_tag_labels_a_video_once(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)  # where clip tag writes its journal

    video = make_video(tmp_path / "walk.mp4", [(4, ("red", "circle")), (4, ("purple", "heart"))], size=(96, 72))
    result = cli("classify", video, "-m", "demo", "-l", "red circle,blue square", "--other", "-f", "jsonl", "-k", "1",
                 "--every", "1")
    video_record, *shots = records(result)
    assert [s["predictions"][0]["label"] for s in shots] == ["red circle", "other"]  # a heart is neither
    assert video_record["time"] == {"other": 4.5, "red circle": 3.5}  # the change (4 s) put halfway: 3.5 s
    tagged = cli("tag", video, "-m", "demo", "-l", "red circle,blue square", "-f", "jsonl")
    assert tagged.exit_code == 0, tagged.output
    assert [r["path"] for r in records(tagged)] == [str(video)] and (tmp_path / "walk.mp4.xmp").is_file()
    if shutil.which("exiftool"):  # the independent reader of what was written
        read = json.loads(subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", str(tmp_path / "walk.mp4.xmp")],
                                         capture_output=True, text=True, check=True).stdout)
        assert read[0]["Subject"] in ("red circle", ["red circle"])


def test_many_decoding_threads_give_every_frame_its_own_picture(tmp_path):
    """Frames of several videos decoded by four threads at once equal those decoded by one (a reader shared between
    threads once gave some frames another time's picture, and could crash the process)."""
    import itertools

    import numpy as np

    from clipcli.store import open_store

    kinds = list(itertools.product(["red", "blue", "green", "yellow"], ["circle", "square", "star", "triangle"]))
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(8):
        make_video(folder / f"v{i}.{'mp4' if i % 2 else 'mkv'}", [(2, kinds[(3 * i + j) % 16]) for j in range(4)],
                   size=(96, 72), codec="libx264" if i % 2 else "mpeg4", gop=10)

    def embed(threads: int) -> dict:
        store = tmp_path / f"store{threads}"
        done = subprocess.run([sys.executable, "-m", "clipcli", "embed", str(folder), "-m", "demo", "--store",
                               str(store), "--every", "0.5", "-j", str(threads), "-q"], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (threads, done.returncode, done.stderr[-2000:])
        return {path: vector for paths, vectors, _ in open_store(store).iter_embeddings()
                for path, vector in zip(paths, vectors)}

    one, four = embed(1), embed(4)
    assert len(one) == len(four) == 8 * 16
    assert min(float(np.dot(one[key], four[key])) for key in one) > 0.999


def test_a_labelled_set_for_eval_counts_images_only(clip_mp4, tmp_path):
    import shutil

    from clipcli.demo import shapes

    for colour, shape in (("red", "circle"), ("blue", "square")):
        folder = tmp_path / "set" / f"{colour} {shape}"
        folder.mkdir(parents=True)
        shapes.draw_pil(colour, shape, size=64, seed=1).save(folder / "a.png")
    shutil.copy(clip_mp4, tmp_path / "set" / "red circle" / "walk.mp4")  # a video is not one labelled picture
    result = json.loads(cli("eval", tmp_path / "set", "-m", "demo", "-f", "json").stdout)
    assert result["results"][0]["count"] == 2 and result["errors"] == []
    manifest = tmp_path / "set.csv"  # a manifest that names a video is refused before any work
    manifest.write_text("path,label\nset/red circle/a.png,red circle\nset/red circle/walk.mp4,red circle\n")
    refused = cli("eval", manifest, "-m", "local-dir:/nonexistent")
    assert refused.exit_code == 2 and "a labelled set is of images" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output


def test_a_changed_video_leaves_no_old_frames_or_old_error_in_the_store(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")  # first an empty file: its error row
    store = tmp_path / "store"
    assert cli("embed", video, "-m", "demo", "--store", store, "--every", "1").exit_code == 1
    make_video(video, [(4, ("red", "circle")), (4, ("blue", "square"))], size=(96, 72))
    assert cli("embed", video, "-m", "demo", "--store", store, "--every", "1").exit_code == 0
    make_video(video, [(3, ("green", "triangle"))], size=(96, 72))  # shorter: times 3-7 s are not sampled now
    assert cli("embed", video, "-m", "demo", "--store", store, "--every", "1").exit_code == 0
    whole = cli("classify", "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "1", "--store", store)
    assert whole.exit_code == 0, whole.output
    found = records(whole)
    assert [(r.get("shot"), r["start"], r["end"], r["predictions"][0]["label"]) for r in found] == [
        (None, 0.0, 3.0, "green triangle"), (1, 0.0, 3.0, "green triangle")]
    info = json.loads(cli("store", "info", store, "-f", "json").stdout)
    assert (info["video_frames"], info["errors"]) == (3, 0)


def test_a_video_cut_short_ends_where_its_frames_do_with_a_warning(tmp_path):
    whole = make_video(tmp_path / "whole.mkv", SCENES, size=(96, 72), codec="mpeg4", gop=10)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 5])  # the copy stopped at 40%
    result = subprocess.run([sys.executable, "-m", "clipcli", "classify", str(cut), "-m", "demo", "-l", LABELS,
                             "-f", "jsonl", "-k", "1", "--every", "1", "-q"], capture_output=True, text=True,
                            timeout=300)
    video, *shots = records(result)
    last_good = max(s["end"] for s in shots)
    assert video["end"] == last_good < 12.0 and video["end"] == pytest.approx(sum(video["time"].values()))
    assert "could not be decoded" in video["warnings"][-1] and "cut short" in video["warnings"][-1]
    lines = result.stderr.splitlines()
    assert lines == [f"warning: {cut}: {said}" for said in video["warnings"]] and result.returncode == 0


def test_adapt_takes_a_video_in_once_through_its_shots(clip_mp4, tmp_path):
    from clipcli.demo import shapes

    for i in range(3):
        shapes.draw_pil("yellow", "star", size=64, seed=i).save(tmp_path / f"star{i}.png")
    result = cli("classify", clip_mp4, tmp_path, "-m", "demo", "-l", LABELS, "-f", "json", "-k", "0", "--adapt",
                 "--every", "1")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["adapt"]["images"] == 3 + 3  # three photos, three shots: the video's own record is not counted
    video, *shots = found["results"][:4]
    weights = [s["end"] - s["start"] for s in shots]
    for label in LABELS.split(","):  # the video's scores: its shots', weighted by their lengths
        mine = next(p["score"] for p in video["predictions"] if p["label"] == label)
        theirs = [next(p["score"] for p in s["predictions"] if p["label"] == label) for s in shots]
        assert mine == pytest.approx(sum(w * t for w, t in zip(weights, theirs)) / sum(weights), abs=1e-6)


def test_the_end_of_one_run_does_not_close_a_video_another_thread_is_decoding(clip_mp4, monkeypatch):
    """Two runs in one process (a library user's threads): the first to end closed every reader of the process,
    also one that another run's thread was decoding from at that moment."""
    import threading

    from clipcli import frames, video
    from clipcli.batches import DecodeLimits

    inside, go_on = threading.Event(), threading.Event()
    real = video.VideoReader.frames

    def slow(self, times):  # the other run's thread, caught in the middle of decoding
        inside.set()
        go_on.wait(30)
        yield from real(self, times)

    monkeypatch.setattr(video.VideoReader, "frames", slow)
    got = []
    other = threading.Thread(target=lambda: got.append(frames.read_frame(f"{clip_mp4}#t=5.000", DecodeLimits())))
    other.start()
    assert inside.wait(30)
    frames.close_readers()  # this thread's run ends meanwhile
    go_on.set()
    other.join(30)
    assert got and got[0][1] == (96, 72)  # the other run's frame came
