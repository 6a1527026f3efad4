"""pmtiqa_deploy.output: the one text form of a file name, the formats read back, the
partial store (claims, duplicates, order), and ResultFile's atomic replace, refusals and
resume, with rows from any source (not only a Scorer). In-process; the killed-process
tests are in test_score_volume.py."""

import json
import os

import pytest

from pmtiqa_deploy.errors import OutputError, OutputRefused
from pmtiqa_deploy.output import (
    PartFolder,
    ResultFile,
    RowStore,
    is_stream,
    open_output,
    quote_path,
    read_rows,
    recorded_paths,
    unquote_path,
)
from pmtiqa_deploy.score import ScoreRow

NAMES = [
    "photos/a.jpg", "photos/café.jpg", "100% sure.png", "a\\351.jpg", "tab\there.jpg",
    "line\nbreak.png", '"quoted".jpg', "#hash.jpg", " lead.jpg", "trail.jpg ", "\u3000wide.jpg",
    os.fsdecode(b"latin1-caf\xe9.jpg"), os.fsdecode(b"\xff\xfe\x80.png"),
    os.fsdecode(b"mixed-\xc3\xa9-\xe9-\xe2\x82.png"), os.fsdecode(b"encoded-surrogate-\xed\xa0\x80.png"),
]


@pytest.mark.parametrize("name", NAMES)
def test_quote_round_trips_every_name(name):
    text = quote_path(name)
    text.encode("utf-8")  # always valid UTF-8: no lone surrogates
    assert unquote_path(text) == name
    assert os.fsencode(unquote_path(text)) == os.fsencode(name)
    assert "\n" not in text and text == text.strip()


def test_plain_names_stay_as_they_are_and_others_are_git_quoted():
    assert quote_path("photos/café.jpg") == "photos/café.jpg"
    assert quote_path("100% sure.png") == "100% sure.png"
    assert quote_path(os.fsdecode(b"caf\xe9.jpg")) == '"caf\\351.jpg"'
    assert quote_path("line\nbreak") == '"line\\nbreak"'
    assert quote_path('"q"') == '"\\"q\\""'
    assert quote_path(b"\x01x") == '"\\001x"'
    assert unquote_path('"unterminated') == '"unterminated'


def _rows(names=NAMES):
    rows = []
    for i, name in enumerate(names):
        if i % 4 == 3:
            rows.append({"path": name, "score": None, "level": None, "error": f"broken, \"{i}\",\n x"})
        else:
            rows.append({"path": name, "score": 10.5 + i, "level": i % 10, "error": None})
    return rows


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_formats_read_back_what_was_written(tmp_path, fmt):
    target = tmp_path / f"out.{fmt}"
    with open_output(target) as out:
        for row in out.inputs([r["path"] for r in _rows()]):
            pass
        for row in _rows():
            out.write(row)
        summary = out.finish()
    assert (summary.rows, summary.failed) == (len(NAMES), len(NAMES) // 4)
    assert list(read_rows(target, fmt)) == _rows()
    target.read_bytes().decode("utf-8")  # strict UTF-8 throughout
    if fmt != "csv":  # strict JSON: no lone surrogates anywhere
        text = target.read_text(encoding="utf-8")
        records = json.loads(text) if fmt == "json" else [json.loads(x) for x in text.splitlines()]
        assert [r["path"] for r in records] == [quote_path(n) for n in NAMES]


def test_result_file_is_atomic_and_refuses_to_destroy(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("previous results\n")
    with pytest.raises(OutputRefused, match="--overwrite.*--resume"):
        open_output(target)
    out = open_output(target, mode="overwrite", flush_rows=1)
    list(out.inputs(["a.jpg", "b.jpg"]))
    out.write(ScoreRow("a.jpg", 1.0, 0))
    assert target.read_text() == "previous results\n"  # untouched until finish
    assert out.partial.exists()
    out.close()  # a failed run: rows kept, target untouched
    assert target.read_text() == "previous results\n"
    with pytest.raises(OutputRefused, match="unfinished run.*--resume"):
        open_output(target)
    again = open_output(target, mode="resume")
    assert list(again.inputs(["a.jpg", "b.jpg"])) == ["b.jpg"] and again.resumed == 1
    again.write(ScoreRow("b.jpg", 2.0, 0))
    again.finish()
    assert target.read_text() == "path,score,level,error\na.jpg,1.0,0,\nb.jpg,2.0,0,\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_run_that_wrote_no_row_leaves_no_partial_file(tmp_path):
    out = open_output(tmp_path / "out.csv")
    list(out.inputs(["a.jpg"]))
    out.close()
    assert list(tmp_path.iterdir()) == []


def test_two_runs_cannot_write_one_output(tmp_path):
    first = open_output(tmp_path / "out.csv")
    try:
        with pytest.raises(OutputRefused, match="another run is writing"):
            open_output(tmp_path / "out.csv", mode="resume")
    finally:
        first.close()


def test_rows_from_any_source_in_any_order_land_in_input_order(tmp_path):
    """A server client may answer out of order; duplicates keep one row each."""
    target = tmp_path / "out.jsonl"
    paths = ["c.jpg", "a.jpg", "c.jpg", "b.jpg"]
    with open_output(target) as out:
        given = list(out.inputs(paths))
        for path in reversed(given):
            out.write({"path": path, "score": float(ord(path[0])), "level": 1, "error": None})
        out.finish()
    assert [r["path"] for r in read_rows(target, "jsonl")] == paths
    with open_output(tmp_path / "x.csv") as out:
        list(out.inputs(["a.jpg"]))
        with pytest.raises(ValueError, match="not an input waiting"):
            out.write(ScoreRow("zzz.jpg", 1.0, 0))
        with pytest.raises(ValueError, match="got no row"):
            out.finish()


def test_resume_from_a_finished_output_keeps_order_and_old_rows(tmp_path):
    target = tmp_path / "out.json"
    with open_output(target) as out:
        for path in out.inputs(["b.jpg", "d.jpg", "gone.jpg"]):
            out.write(ScoreRow(path, 5.0, 0))
        out.finish()
    with open_output(target, mode="resume") as out:
        todo = list(out.inputs(["a.jpg", "b.jpg", "c.jpg", "d.jpg"]))
        assert todo == ["a.jpg", "c.jpg"]
        for path in todo:
            out.write(ScoreRow(path, 7.0, 0, None))
        summary = out.finish()
    rows = json.loads(target.read_text())
    assert [r["path"] for r in rows] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "gone.jpg"]
    assert (summary.rows, summary.resumed, summary.kept) == (4, 2, 1)


def test_extra_columns_travel_with_rows(tmp_path):
    target = tmp_path / "out.jsonl"
    with open_output(target, extra_columns=("label", "split")) as out:
        list(out.inputs(["a.jpg"]))
        out.write({"path": "a.jpg", "score": 1.0, "level": 0, "error": None, "label": 3.5, "split": "test"})
        out.finish()
    assert list(read_rows(target, "jsonl")) == [
        {"path": "a.jpg", "score": 1.0, "level": 0, "error": None, "label": 3.5, "split": "test"}]
    with pytest.raises(ValueError, match="score columns"):
        open_output(tmp_path / "y.csv", extra_columns=("score",))
    with open_output(tmp_path / "nan.jsonl", extra_columns=("label",)) as out:  # pandas' missing value
        list(out.inputs(["a.jpg"]))
        out.write({"path": "a.jpg", "score": 1.0, "level": 0, "error": None, "label": float("nan")})
        out.finish()
    assert json.loads((tmp_path / "nan.jsonl").read_text())["label"] is None
    killed = ResultFile(tmp_path / "z.csv", "csv")  # a killed run without extra columns
    list(killed.inputs(["a.jpg"]))
    killed.write(ScoreRow("a.jpg", 1.0, 0))
    killed.close()
    with pytest.raises(OutputRefused, match=r"columns \['path', 'score', 'level', 'error'\]"):
        open_output(tmp_path / "z.csv", mode="resume", extra_columns=("label",))


def test_recorded_paths_from_partial_and_finished(tmp_path):
    target = tmp_path / "out.csv"
    odd = os.fsdecode(b"odd\xff.jpg")
    out = open_output(target)
    list(out.inputs(["a.jpg", odd]))
    out.write(ScoreRow(odd, 1.0, 0))
    with pytest.raises(OutputRefused, match="being written by a run now"):
        recorded_paths(target)
    out.close()
    assert recorded_paths(target) == {odd}
    with open_output(target, mode="resume") as out:
        for path in out.inputs(["a.jpg", odd]):
            out.write(ScoreRow(path, 2.0, 0))
        out.finish()
    assert recorded_paths(target) == {"a.jpg", odd}
    assert recorded_paths(tmp_path / "never.csv") == set()


def test_resume_refuses_a_file_that_is_not_an_output(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("name,value\nx,1\n")
    with pytest.raises(OutputRefused, match="not a csv output"):
        open_output(target, mode="resume")
    assert not (tmp_path / "out.csv.partial").exists()
    (tmp_path / "bad.csv.partial").write_text("not sqlite at all, just text " * 100)
    with pytest.raises(OutputRefused, match="not a partial output"):
        open_output(tmp_path / "bad.csv", mode="resume")
    with open_output(tmp_path / "bad.csv", mode="overwrite") as out:  # --overwrite discards it
        out.finish()


def test_missing_folder_and_stream_errors_name_path_and_cause(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        open_output(tmp_path / "nowhere" / "out.csv")
    with open_output("/dev/full", "jsonl") as out:  # a device is written as a stream
        with pytest.raises(OutputError, match=r"cannot write /dev/full \(No space left on device\)"):
            for path in out.inputs([f"{i}.jpg" for i in range(200)]):
                out.write(ScoreRow(path, 1.0, 0))
            out.finish()
    with pytest.raises(ValueError, match="regular output file"):
        open_output("/dev/full", mode="resume")


def test_store_claims_each_row_once_per_run(tmp_path):
    columns = ("path", "score", "level", "error")
    store = RowStore(tmp_path / "s.partial", columns)
    store.add({"path": "a", "score": 1.0}, 0)
    store.add({"path": "a", "score": 1.0}, 1)
    store.commit()
    store.close()
    store = RowStore(tmp_path / "s.partial", columns)
    assert store.run == 2
    assert [store.claim("a", 5), store.claim("a", 6), store.claim("a", 7)] == [True, True, False]
    store.add({"path": "b", "score": None, "error": "broken"}, 4)
    assert store.counts() == (3, 1, 0)
    assert [(r["path"], r["error"]) for r in store.rows()] == [("b", "broken"), ("a", None), ("a", None)]
    store.close()


def test_parquet_reads_back_typed_rows_and_resumes(tmp_path):
    pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
    import pyarrow.parquet as pq

    target = tmp_path / "out.parquet"
    with open_output(target, extra_columns=("label",)) as out:
        list(out.inputs([r["path"] for r in _rows()]))
        for i, row in enumerate(_rows()):
            out.write({**row, "label": i})
        out.finish()
    assert list(read_rows(target, "parquet")) == [{**r, "label": i} for i, r in enumerate(_rows())]
    schema = pq.read_schema(target)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("path", "string"), ("score", "double"), ("level", "int64"), ("error", "string"), ("label", "int64")]
    with open_output(target, mode="resume", extra_columns=("label",)) as out:
        assert list(out.inputs(["new.jpg", NAMES[0]])) == ["new.jpg"]
        out.write({"path": "new.jpg", "score": 1.0, "level": 0, "error": None, "label": "text"})
        with pytest.raises(ValueError, match="column 'label' mixes types"):
            out.finish()
    assert [r["path"] for r in read_rows(target, "parquet")] == NAMES  # still the old file


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_part_folder_parts_appear_whole_and_give_the_resume_set(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
    parts = PartFolder(tmp_path / "scores", fmt)
    assert parts.recorded_paths() == set()
    rows = _rows()
    parts.write_part(rows[:5], "job1-000000")
    parts.write_part(rows[5:9], "job1-000001")
    (tmp_path / "scores" / ".writing-deadbeef-part-job1-000002.x").write_bytes(b"torn")  # a killed writer

    def failing():  # the block's scoring fails half-way: no part appears
        yield rows[9]
        raise RuntimeError("the scorer failed")

    with pytest.raises(RuntimeError):
        parts.write_part(failing(), "job1-000002")
    with pytest.raises(OutputRefused, match="name of its own"):
        parts.write_part(rows[:1], "job1-000000")
    assert [p.name for p in parts.parts()] == [f"part-job1-00000{i}.{fmt}" for i in (0, 1)]
    assert list(parts.rows()) == rows[:9]
    assert parts.recorded_paths() == set(NAMES[:9]) == recorded_paths(tmp_path / "scores", fmt)
    assert parts.remove_temporaries() == 1


@pytest.mark.parametrize("text,expected", [
    ("[]\n", []), ("[\n]\n", []), ('[\n  {"path": "a"},\n  {"path": "b"}\n]\n', ["a", "b"]),
    ('[{"path": "a"},\n{"path": "b"}]', ["a", "b"]), ('[\n  {\n "path": "a"}\n]', ["a"]),
])
def test_json_outputs_read_back_line_by_line_or_whole(tmp_path, text, expected):
    (tmp_path / "x.json").write_text(text)
    assert [r["path"] for r in read_rows(tmp_path / "x.json", "json")] == expected


def test_a_json_output_cut_short_is_not_resumed_from(tmp_path):
    (tmp_path / "x.json").write_text('[\n  {"path": "a", "score": 1.0, "level": 0, "error": null},\n')
    with pytest.raises(OutputRefused, match="cut short"):
        open_output(tmp_path / "x.json", mode="resume")


def test_a_linked_target_is_replaced_through_its_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "scores.csv").write_text("old\n")
    (tmp_path / "scores.csv").symlink_to(tmp_path / "real" / "scores.csv")
    with open_output(tmp_path / "scores.csv", mode="overwrite") as out:
        list(out.inputs(["a.jpg"]))
        out.write(ScoreRow("a.jpg", 1.0, 0))
        out.finish()
    assert (tmp_path / "scores.csv").is_symlink()
    assert (tmp_path / "real" / "scores.csv").read_text() == "path,score,level,error\na.jpg,1.0,0,\n"


def test_names_under_dev_and_proc_are_streams_never_replaced():
    assert is_stream("/dev/stdout") and is_stream("/dev/full") and is_stream("/proc/self/fd/1")
    assert is_stream("/dev/no-such-device")  # never created
    assert not is_stream("/dev/shm/scores.csv") and not is_stream("scores.csv")


def test_rows_may_come_from_many_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = [f"{i:04d}.jpg" for i in range(400)]
    with open_output(tmp_path / "out.jsonl", flush_rows=7) as out:
        given = list(out.inputs(paths))
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: out.write(ScoreRow(p, float(p[:4]), 0)), given))
        out.finish()
    assert [r["path"] for r in read_rows(tmp_path / "out.jsonl", "jsonl")] == paths


def test_a_partial_file_without_rows_is_not_in_the_way(tmp_path):
    """A run killed before its first row leaves a partial file with nothing to resume."""
    (tmp_path / "out.csv.partial").write_bytes(b"")
    with open_output(tmp_path / "out.csv") as out:
        for path in out.inputs(["a.jpg"]):
            out.write(ScoreRow(path, 1.0, 0))
        out.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
