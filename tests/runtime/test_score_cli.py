"""pmtiqa-score end to end over files the tests write: exit codes 0/1/2, the three output
formats, input order, list files; and pmtiqa-bench's option checks. Runs in-process with
click's CliRunner (the console-script wrappers are checked by tests/test_imports.py)."""

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from scoring_inputs import AWKWARD, exported_model, null_model_dir, write_awkward_folder

from pmtiqa_deploy.cli import bench_command, score_command


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("awkward-cli")
    write_awkward_folder(folder)
    return folder


@pytest.fixture(scope="module")
def null_dir(tmp_path_factory) -> Path:
    return null_model_dir(tmp_path_factory.mktemp("null-model-cli"))


def _score(*args):
    result = CliRunner().invoke(score_command, [*map(str, args), "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _good(folder: Path) -> list[Path]:
    return [folder / n for n in sorted(AWKWARD) if AWKWARD[n]]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_formats_to_stdout_and_file(awkward, null_dir, tmp_path, fmt):
    good = _good(awkward)[:4]
    out = _score(*good, "--model", null_dir, "--backend", "null", "--format", fmt, "--batch", "3")
    assert out.exit_code == 0, out.output
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        assert list(rows[0]) == ["path", "score", "level", "error"]
        assert all(r["error"] == "" for r in rows)
        rows = [{**r, "score": float(r["score"]), "level": int(r["level"]), "error": None} for r in rows]
    elif fmt == "json":
        rows = json.loads(out.stdout)
    else:
        rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in good]
    assert all(r["error"] is None and r["level"] == int(r["score"] // 10) for r in rows)
    assert "scored 4 of 4" in out.stderr
    # -o FILE: the same rows; the format follows the suffix when --format is not given
    target = tmp_path / f"rows.{fmt}"
    again = _score(*good, "--model", null_dir, "--backend", "null", "-o", target, "--batch", "3")
    assert again.exit_code == 0 and again.stdout == ""
    assert target.read_text() == out.stdout


def test_folder_with_broken_files_exits_1_with_a_row_each(awkward, null_dir):
    out = _score(awkward, "--model", null_dir, "--backend", "null", "--format", "jsonl")
    assert out.exit_code == 1
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == sorted(AWKWARD)
    assert {Path(r["path"]).name for r in rows if r["error"]} == {n for n, ok in AWKWARD.items() if not ok}
    assert "4 failed" in out.stderr


def test_list_files_keep_input_order(awkward, null_dir, tmp_path):
    good = _good(awkward)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in reversed(good[:3])) + "\n")
    out = _score(good[5], f"@{listing}", "--list", listing, "--model", null_dir, "--backend", "null",
                 "--format", "jsonl")
    assert out.exit_code == 0, out.output
    paths = [json.loads(line)["path"] for line in out.stdout.splitlines()]
    assert paths == [str(good[5])] + [str(p) for p in reversed(good[:3])] * 2


def test_exit_2_when_nothing_can_run(awkward, null_dir, tmp_path):
    image = _good(awkward)[0]
    missing = _score(image, "--model", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "pmtiqa-export" in missing.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text('{"score": {"min": 0, "max": 100}, "colour": "BGR"}')
    spec = _score(image, "--model", bad)
    assert spec.exit_code == 2 and "unknown key" in spec.stderr
    no_artifact = _score(image, "--model", null_dir, "--backend", "onnxruntime", "--precision", "fp16")
    assert no_artifact.exit_code == 2 and "pmtiqa-export" in no_artifact.stderr
    torch_needs = _score(image, "--model", null_dir, "--backend", "torch")
    assert torch_needs.exit_code == 2 and "checkpoint" in torch_needs.stderr
    batch = _score(image, "--model", null_dir, "--backend", "null", "--batch", "64")
    assert batch.exit_code == 2 and "outside the model's range" in batch.stderr
    listing = _score(f"@{tmp_path / 'nolist.txt'}", "--model", null_dir, "--backend", "null")
    assert listing.exit_code == 2 and "list file" in listing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _score(empty, "--model", null_dir, "--backend", "null")
    assert nothing.exit_code == 2 and "no image files" in nothing.stderr
    usage = _score("--model", null_dir)
    assert usage.exit_code == 2 and "give image files" in usage.output


def test_tensorrt_unavailable_here_exits_2_with_advice(awkward, null_dir):
    out = _score(_good(awkward)[0], "--model", null_dir, "--backend", "tensorrt")
    assert out.exit_code == 2
    assert "install" in out.stderr or "GPU" in out.stderr or "tensorrt" in out.stderr


@pytest.mark.slow
def test_onnxruntime_cli_matches_alone_scores(awkward, tmp_path_factory):
    model_dir, _ = exported_model(tmp_path_factory)
    out = _score(awkward, "--model", model_dir, "--format", "json", "--batch", "4", "--threads", "2")
    assert out.exit_code == 1
    rows = {Path(r["path"]).name: r for r in json.loads(out.stdout)}
    for name in ("a_photo.jpg", "j_cmyk.jpg"):
        alone = _score(awkward / name, "--model", model_dir, "--format", "json", "--batch", "1")
        assert alone.exit_code == 0 and json.loads(alone.stdout)[0]["score"] == rows[name]["score"]


def test_progress_bar_goes_to_stderr(awkward, null_dir, monkeypatch):
    monkeypatch.setattr("pmtiqa_deploy.progress.PLAIN_INTERVAL_S", 0.0)  # a line per image
    result = CliRunner().invoke(score_command, [str(p) for p in _good(awkward)[:2]] +
                                ["--model", str(null_dir), "--backend", "null", "--progress"])
    assert result.exit_code == 0
    assert "scoring (null)" in result.stderr and "2/2" in result.stderr
    assert "scoring" not in result.stdout


def test_bench_rejects_bad_options(null_dir, awkward):
    run = CliRunner().invoke
    assert run(bench_command, ["--model", str(null_dir)]).exit_code == 2  # no images chosen
    both = run(bench_command, ["--model", str(null_dir), "--images", str(awkward), "--builtin"])
    assert both.exit_code == 2 and "exactly one" in both.output
    bad = run(bench_command, ["--model", str(null_dir), "--images", str(awkward), "--batch", "x"])
    assert bad.exit_code == 2 and "1,8,32" in bad.output
    unknown = run(bench_command, ["--model", str(null_dir), "--images", str(awkward), "--backend", "openvino"])
    assert unknown.exit_code == 2 and "openvino" in unknown.output


def test_existing_output_is_refused_without_overwrite_or_resume(awkward, null_dir, tmp_path):
    good = [str(p) for p in _good(awkward)[:3]]
    target = tmp_path / "scores.csv"
    target.write_text("precious\n")
    refused = _score(*good, "--model", null_dir, "--backend", "null", "-o", target)
    assert refused.exit_code == 2 and target.read_text() == "precious\n"
    assert "exists" in refused.stderr and "--overwrite" in refused.stderr and "--resume" in refused.stderr
    replaced = _score(*good, "--model", null_dir, "--backend", "null", "-o", target, "--overwrite")
    assert replaced.exit_code == 0 and len(target.read_text().splitlines()) == 4
    resumed = _score(*good, "--model", null_dir, "--backend", "null", "-o", target, "--resume")
    assert resumed.exit_code == 0 and "3 row(s) were already in" in resumed.stderr
    both = _score(*good, "--model", null_dir, "--backend", "null", "-o", target, "--resume", "--overwrite")
    assert both.exit_code == 2 and "give one" in both.output
    alone = _score(*good, "--model", null_dir, "--backend", "null", "--resume")
    assert alone.exit_code == 2 and "-o FILE" in alone.output


def test_output_that_is_an_input_is_refused_before_writing(awkward, null_dir, tmp_path):
    good = _good(awkward)
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f"{p}\n" for p in good[:2]))
    before = listing.read_bytes()
    for args in ([f"@{listing}"], ["--list", listing]):
        out = _score(*args, "--model", null_dir, "--backend", "null", "-o", listing, "--overwrite")
        assert out.exit_code == 2 and "is the list file" in out.stderr
        assert listing.read_bytes() == before and not (tmp_path / "paths.txt.partial").exists()
    same = _score(good[0], "--model", null_dir, "--backend", "null", "-o", good[0], "--overwrite")
    assert same.exit_code == 2 and "is the input" in same.stderr
    inside = _score(awkward, "--model", null_dir, "--backend", "null", "-o", awkward / "sub" / "out.png")
    assert inside.exit_code == 2 and "inside the scanned folder" in inside.stderr
    assert not (awkward / "sub").exists()


def test_summary_counts_scored_failed_and_skipped(awkward, null_dir, tmp_path):
    out = _score(awkward, "--model", null_dir, "--backend", "null", "-o", tmp_path / "s.jsonl")
    assert out.exit_code == 1
    assert f"scored 10 of {len(AWKWARD)} image(s); 4 failed" in out.stderr
    assert "1 file(s) in the folders skipped (not an image extension)" in out.stderr  # notes.txt


def test_parquet_output(awkward, null_dir, tmp_path):
    pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
    from pmtiqa_deploy.output import read_rows

    target = tmp_path / "scores.parquet"
    out = _score(awkward, "--model", null_dir, "--backend", "null", "-o", target)
    assert out.exit_code == 1
    rows = list(read_rows(target, "parquet"))
    assert [Path(r["path"]).name for r in rows] == sorted(AWKWARD)


def test_a_run_that_cannot_start_leaves_nothing_behind(awkward, null_dir, tmp_path):
    out = _score(_good(awkward)[0], "--model", null_dir, "--backend", "null", "--batch", "64",
                 "-o", tmp_path / "scores.csv")
    assert out.exit_code == 2 and "outside the model's range" in out.stderr
    assert list(tmp_path.iterdir()) == []
    to_stdout = _score(_good(awkward)[0], "--model", null_dir, "--backend", "null", "--batch", "64")
    assert to_stdout.exit_code == 2 and to_stdout.stdout == ""  # not even a CSV header
