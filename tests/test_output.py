"""Where records go: the table, JSON, CSV and JSON Lines read back, an output file written atomically, a device
written in place, a full disk (one line, exit 5, no temporary file left), and a reader that closes the pipe."""

import errno
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from cli_helpers import cli, clip
from hypothesis import given, settings
from text_strategies import records

from clipcli.results import CsvWriter, JsonLinesWriter, JsonWriter, read_csv_records

LABELS = "red circle,blue square,green star"


def test_table_output_ranks_labels(run, images):
    result = run(str(images / "red_circle.png"), "--labels", LABELS)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "│" in line]
    assert len(lines) == 3
    probabilities = [float(line.split("│")[2]) for line in lines]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    assert "red_circle.png" in "".join(result.stdout.split())  # a long temporary path wraps in the title


def test_json_document_and_csv_agree(run, images):
    as_json = run(str(images), "--labels", LABELS, "--format", "json", "--top-k", "0")
    as_csv = run(str(images), "--labels", LABELS, "--format", "csv", "--top-k", "0")
    assert as_json.exit_code == 0 and as_csv.exit_code == 0
    document = json.loads(as_json.stdout)
    assert document["labels"] == LABELS.split(",")
    assert document["templates"] == "imagenet"
    assert as_csv.stdout.splitlines()[0] == "path,rank,label,score,error_type,error_message,shot,start,end"
    from_csv = read_csv_records(as_csv.stdout)
    assert len(from_csv) == 3
    for a, b in zip(document["results"], from_csv):
        assert a["path"] == b["path"]
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["score"] for p in a["predictions"]] == pytest.approx([p["score"] for p in b["predictions"]], abs=0)


def test_output_file_is_written(run, images, tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old content\n")
    result = run(str(images), "--labels", LABELS, "--format", "jsonl", "-o", str(target))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert len([json.loads(line) for line in target.read_text().splitlines()]) == 3
    assert not list(tmp_path.glob(".out.jsonl.*"))


# regression: -o /dev/null was written atomically, renaming a regular file over the device
def test_output_to_a_device_is_written_in_place(run, images):
    result = run(str(images / "red_circle.png"), "--labels", LABELS, "--format", "jsonl", "-o", "/dev/null")
    assert result.exit_code == 0
    import os
    import stat
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device, not a file renamed over it


@settings(max_examples=150, deadline=None)
@given(records)
def test_records_round_trip_through_every_format(items):
    jsonl, document, table = io.StringIO(), io.StringIO(), io.StringIO(newline="")
    writers = [JsonLinesWriter(jsonl), JsonWriter(document, {"labels": ["x"]}), CsvWriter(table)]
    for record in items:
        for writer in writers:
            writer.write(record)
    for writer in writers:
        writer.close()
    assert [json.loads(line) for line in jsonl.getvalue().split("\n") if line] == items
    assert json.loads(document.getvalue())["results"] == items
    assert read_csv_records(table.getvalue()) == items


def many_labels(count=60):
    return ",".join(f"label number {i} with a long name" for i in range(count))


# regression: a full disk under -o ended in a traceback, and closing the temporary file could fail and leave it behind
def test_disk_full_while_writing_output_is_one_line_and_leaves_no_temp_file(monkeypatch, shapes_dir, tmp_path):
    from clipcli import results

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "out.jsonl"

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.JsonLinesWriter, "write", full)
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl", "-o", target)
    assert result.exit_code == 5, result.output
    assert result.stderr == f"error: cannot write {target}: no space left on device\n"
    assert list(out_dir.iterdir()) == []


# regression: a full disk under -o ended in a traceback, and closing the temporary file could fail and leave it behind
def test_disk_full_on_a_real_filesystem(tiny_tmpfs, shapes_dir):
    for i in range(30):
        shutil.copy(shapes_dir / "red_circle.png", shapes_dir / f"copy{i}.png")
    target = tiny_tmpfs / "out.json"
    result = clip("classify", shapes_dir, "-m", "demo", "-l", many_labels(), "-k", "0", "-f", "json",
                  "--templates", "simple", "-o", target)
    assert result.returncode == 5, result.stderr
    assert result.stderr == f"error: cannot write {target}: no space left on device\n"
    assert list(tiny_tmpfs.iterdir()) == []


# regression: a full disk under standard output ended in a traceback, not one line with exit 5
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_standard_output_on_a_full_device(shapes_dir):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "clipcli", "classify", str(shapes_dir), "-m", "demo",
                                 "-l", many_labels(), "-k", "0", "-f", "json", "--templates", "simple"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 5, result.stderr
    assert result.stderr == "error: cannot write standard output: no space left on device\n"


# regression: rich's Console ended table output to a closed pipe with exit 1
def test_table_to_a_closed_pipe_exits_0(shapes_dir):
    for i in range(6):
        shutil.copy(shapes_dir / "red_circle.png", shapes_dir / f"copy{i}.png")
    command = (f"set -o pipefail; {sys.executable} -m clipcli classify {shapes_dir} -m demo -l '{LABELS}' "
               "-f table --batch-size 1 --templates simple | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


GIVE_UP_FROM_A_THREAD = """
import sys, threading
from clipcli.engines.ray import _give_up
from clipcli.fsutil import atomic_output

with atomic_output(sys.argv[1]) as out:
    out.write('{"path": "a.png"}\\n')
    out.flush()
    threading.Thread(target=_give_up, args=("the Ray raylet of this node died mid-run",)).start()
    threading.Event().wait()  # the main thread never leaves the block: its `finally` cannot clean up
"""


def test_a_run_ended_from_the_ray_watch_thread_leaves_no_temporary_output(tmp_path):
    # issue 30 #19: os._exit from the watch thread skipped the atomic writer's cleanup: `.out.jsonl.*.tmp` stayed
    folder = tmp_path / "out"
    folder.mkdir()
    result = subprocess.run([sys.executable, "-c", GIVE_UP_FROM_A_THREAD, str(folder / "out.jsonl")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr == "error: the Ray raylet of this node died mid-run\n"
    assert list(folder.iterdir()) == []
