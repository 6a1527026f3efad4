"""The served pipeline's steps (pmtiqa_deploy.triton.stages) and pmtiqa-serve's batched
callable, in-process on the null backend: the crops are the runtime's, the error texts
and rows are local scoring's, and the tensors round-trip to the client's rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from served import write_inputs, write_photos

from pmtiqa_deploy.backends.null import NullBackend
from pmtiqa_deploy.score import ScoreRow, Scorer
from pmtiqa_deploy.spec import InputSpec, ModelSpec, PreprocessSpec, ScoreSpec
from pmtiqa_deploy.triton import stages
from pmtiqa_deploy.triton.serve import infer_function

SPEC = ModelSpec(score=ScoreSpec.from_levels(0.0, 100.0, 10), preprocess=PreprocessSpec(crop_size=64, crop_count=2),
                 input=InputSpec(batch_opt=4, batch_max=8), backbone="resnet18")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    photos = write_photos(tmp_path_factory.mktemp("stage-photos"))
    return write_inputs(tmp_path_factory.mktemp("stage-inputs"), photos)


@pytest.fixture
def scorer():
    with Scorer(NullBackend.from_spec(SPEC), batch_size=3, owns_backend=True) as scorer:
        yield scorer


def _bytes(path):
    return path.read_bytes() if path.exists() else None


def test_prepare_images_gives_the_runtimes_crops_and_error_texts(files, scorer):
    present = [p for p in files if p.exists()]
    crops, errors = stages.prepare_images([p.read_bytes() for p in present], SPEC)
    assert crops.shape == (len(present), 2, 3, 64, 64) and crops.dtype == np.float32
    local = {row.path: row.error for row in scorer.score_files(present)}
    assert errors == [local[str(p)] for p in present]
    for path, image, error in zip(present, crops, errors):
        if error is None:
            np.testing.assert_array_equal(image, scorer.load(path))
        else:
            assert not image.any()  # a failed image keeps its slot with zero crops


def test_image_bytes_keep_trailing_zero_bytes():
    tensor = np.array([b"BM\x00\x00", b"\x00"], dtype=object).reshape(-1, 1)
    assert stages.image_bytes(tensor) == [b"BM\x00\x00", b"\x00"]


def test_rows_round_trip_to_the_clients_rows():
    scores = np.array([12.345678, np.nan, 99.5, 0.0], dtype=np.float32)
    errors = [None, None, "not a readable image (unknown format or corrupt data)", None]
    rows = stages.rows_from_scores(scores, errors, SPEC, "Triton python")
    assert rows[0] == ScoreRow("", float(str(np.float32(12.345678))), 1)
    assert rows[1].error.startswith("the Triton python backend returned a non-finite score")
    assert rows[2] == ScoreRow("", error=errors[2]) and rows[3] == ScoreRow("", 0.0, 0)
    tensors = stages.row_tensors(rows)
    assert tensors["score"].shape == tensors["level"].shape == tensors["error"].shape == (4, 1)
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert stages.rows_from_tensors(paths, tensors) == [
        ScoreRow(p, r.score, r.level, r.error) for p, r in zip(paths, rows)]
    with pytest.raises(ValueError, match="for 3 images"):
        stages.rows_from_tensors(paths[:3], tensors)


def test_serve_callable_scores_like_local_scoring(files, scorer):
    """pmtiqa-serve's callable over a request's bytes gives local scoring's rows."""
    present = [p for p in files if p.exists()]
    with ThreadPoolExecutor(2) as pool:
        outputs = infer_function(scorer, pool)(np.array([p.read_bytes() for p in present], dtype=object)[:, None])
    served = stages.rows_from_tensors([str(p) for p in present], outputs)
    assert served == list(scorer.score_files(present))
    assert sum(row.error is None for row in served) == 7
