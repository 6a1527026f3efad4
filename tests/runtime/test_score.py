"""The Scorer: every input gets a row in input order, broken files cost one error row,
a good image scores the same in a batch as alone, four threads agree with one, paths are
pulled lazily (memory flat), and input expansion (folders, list files). Runs on the null
backend everywhere and on a real exported ONNX model where the export extra is installed."""

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scoring_inputs import AWKWARD, exported_model, null_model_dir, photo, write_awkward_folder

from pmtiqa_deploy.backends.null import NullBackend
from pmtiqa_deploy.errors import InputError
from pmtiqa_deploy.inputs import check_list_files, count_paths, iter_paths
from pmtiqa_deploy.score import Scorer, ScoreRow, open_backend


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("awkward")
    write_awkward_folder(folder)
    return folder


@pytest.fixture(scope="module")
def null_dir(tmp_path_factory) -> Path:
    return null_model_dir(tmp_path_factory.mktemp("null-model"))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return exported_model(tmp_path_factory)


def _check_awkward_rows(rows: list[ScoreRow], folder: Path) -> None:
    assert [Path(r.path).name for r in rows] == sorted(AWKWARD)  # every input, input order
    for row in rows:
        name = Path(row.path).name
        if AWKWARD[name]:
            assert row.error is None, (name, row.error)
            assert isinstance(row.score, float) and np.isfinite(row.score)
            assert row.level == min(9, max(0, int(row.score // 10)))
        else:
            assert row.score is None and row.level is None and row.error, name
            assert str(folder) not in row.error  # the path is in its own column


def _scores_alone(scorer: Scorer, rows: list[ScoreRow]) -> dict[str, float]:
    return {r.path: scorer.score_file(r.path).score for r in rows if r.error is None}


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_null_backend_scores_awkward_folder(awkward, null_dir, batch_size):
    with Scorer.open(null_dir, "null", batch_size=batch_size, workers=2) as scorer:
        rows = list(scorer.score_files(iter_paths([awkward])))
        _check_awkward_rows(rows, awkward)
        alone = _scores_alone(scorer, rows)
    assert {r.path: r.score for r in rows if r.error is None} == alone
    errors = {Path(r.path).name: r.error for r in rows if r.error}
    assert "empty" in errors["c_zero_bytes.jpg"]
    assert "truncated" in errors["d_truncated.jpg"]
    assert "not a readable image" in errors["e_text.jpg"]
    assert "32 pixels" in errors["f_one_pixel.png"]


@pytest.mark.slow
def test_exported_onnx_model_scores_awkward_folder(awkward, onnx_model):
    model_dir, _ = onnx_model
    with Scorer.open(model_dir, "onnxruntime", batch_size=4, workers=2, threads=2) as scorer:
        rows = list(scorer.score_files(iter_paths([awkward])))
        _check_awkward_rows(rows, awkward)
        alone = _scores_alone(scorer, rows)
        assert {r.path: r.score for r in rows if r.error is None} == alone  # bit-identical
        scores = [r.score for r in rows if r.error is None]
        assert len(set(scores)) == len(scores)  # the model does tell the images apart
        again = [r.score for r in scorer.score_files(iter_paths([awkward])) if r.error is None]
        assert again == scores  # deterministic


def _threads_agree(scorer: Scorer, paths: list[Path]) -> None:
    single = [r.to_dict() for r in scorer.score_files(paths)]
    results: dict[int, list] = {}

    def work(index: int) -> None:
        order = paths[index:] + paths[:index]  # different batch company in every thread
        rows = {r.path: r.to_dict() for r in scorer.score_files(order)}
        results[index] = [rows[str(p)] for p in paths]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for rows in results.values():
        assert rows == single


class RacyNull(NullBackend):
    """A backend that is not thread-safe (like a TensorRT context): it parks its input in
    an attribute and reads it back after a pause. Without the Scorer's lock, concurrent
    batches would read each other's input and come back with the wrong scores."""

    def _infer(self, images):
        self.current = images
        time.sleep(0.002)
        return super()._infer(self.current)


def test_four_threads_through_one_null_scorer_agree_with_one(awkward, null_dir):
    paths = list(iter_paths([awkward]))
    with Scorer(RacyNull(null_dir), batch_size=3, workers=2) as scorer:
        _threads_agree(scorer, paths)


@pytest.mark.slow
def test_four_threads_through_one_onnx_scorer_agree_with_one(awkward, onnx_model):
    model_dir, _ = onnx_model
    paths = [p for p in iter_paths([awkward]) if "huge" not in p.name]
    with Scorer.open(model_dir, "onnxruntime", batch_size=3, workers=2, threads=1) as scorer:
        _threads_agree(scorer, paths)


def test_paths_are_pulled_lazily(awkward, null_dir):
    """An endless stream of inputs: rows come out after a bounded number of paths."""
    pulled = []

    def endless(path):
        for i in itertools.count():
            pulled.append(i)
            yield path

    with Scorer.open(null_dir, "null", batch_size=4, workers=2) as scorer:
        rows = list(itertools.islice(scorer.score_files(endless(awkward / "a_photo.jpg")), 10))
        assert len(rows) == 10 and len({r.score for r in rows}) == 1
        assert len(pulled) <= 10 + scorer.prefetch + scorer.batch_size
        # One good image followed by endless broken ones: the error rows do not pile up
        # behind the partial batch without bound.
        pulled.clear()
        bad = itertools.chain([awkward / "a_photo.jpg"], endless(awkward / "e_text.jpg"))
        first = next(scorer.score_files(bad))
        assert first.error is None and len(pulled) <= 2 * scorer.prefetch + 2 * scorer.batch_size


class RecordingNull(NullBackend):
    """The null backend, remembering the batch sizes it ran."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes: list[int] = []

    def _infer(self, images):
        self.shapes.append(images.shape[0])
        return super()._infer(images)


def test_pad_runs_every_batch_at_full_size(awkward, null_dir):
    paths = list(iter_paths([awkward]))  # 10 good images
    plain = RecordingNull(null_dir)
    padded = RecordingNull(null_dir)
    with Scorer(plain, batch_size=4, workers=1) as a, Scorer(padded, batch_size=4, workers=1, pad=True) as b:
        rows_a, rows_b = list(a.score_files(paths)), list(b.score_files(paths))
        assert rows_a == rows_b
        assert b.score_file(paths[0]) == rows_b[0]
    assert plain.shapes == [4, 4, 2] and set(padded.shapes) == {4} and len(padded.shapes) == 4


def test_score_crops_and_batch_range(null_dir):
    backend = NullBackend(null_dir)
    with pytest.raises(InputError, match="outside the model's range 1..8"):
        Scorer(backend, batch_size=9)
    scorer = Scorer(backend, batch_size=2)
    crops = [scorer.prepare(photo(240, 260, s)) for s in range(5)]
    scores, levels = scorer.score_crops(crops)
    assert scores.shape == (5,) and levels.tolist() == [int(s // 10) for s in scores]
    np.testing.assert_array_equal(scores, Scorer(backend, batch_size=5).score_crops(crops)[0])
    scorer.close()
    scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score_file("x.jpg")


def test_open_backend_rejects_options_a_backend_does_not_take(null_dir):
    with pytest.raises(ValueError, match="takes no threads option"):
        open_backend("null", null_dir, threads=2)
    with pytest.raises(ValueError, match="takes no checkpoint option"):
        open_backend("onnxruntime", null_dir, checkpoint="ckpt")


# --- input expansion ------------------------------------------------------------------

def test_folders_list_files_and_missing_paths(tmp_path):
    (tmp_path / "b" / "sub").mkdir(parents=True)
    (tmp_path / "b" / ".hidden").mkdir()
    for name in ("b/z.JPG", "b/a.png", "b/sub/c.webp", "b/.hidden/d.jpg", "b/notes.txt", "b/._e.jpg"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n\n{tmp_path / 'b' / 'a.png'}\n  {tmp_path / 'b' / 'sub'}  \n")
    found = list(iter_paths([str(tmp_path / "b"), str(tmp_path / "gone.jpg"), f"@{listing}"],
                            [listing]))
    names = [p.relative_to(tmp_path).as_posix() if p.is_relative_to(tmp_path) else str(p) for p in found]
    assert names == ["b/a.png", "b/sub/c.webp", "b/z.JPG", "gone.jpg", "b/a.png", "b/sub/c.webp",
                     "b/a.png", "b/sub/c.webp"]
    assert count_paths([str(tmp_path / "b")]) == 3
    with pytest.raises(InputError, match="list file .*missing.txt"):
        check_list_files([f"@{tmp_path / 'missing.txt'}"])
    with pytest.raises(InputError, match="list file"):
        check_list_files([], [tmp_path / "missing.txt"])


def test_missing_file_gets_an_error_row(null_dir, tmp_path):
    with Scorer.open(null_dir, "null") as scorer:
        row = scorer.score_file(tmp_path / "gone.jpg")
    assert row.score is None and "cannot read file" in row.error
    assert row.to_dict() == {"path": str(tmp_path / "gone.jpg"), "score": None, "level": None,
                             "error": row.error}
