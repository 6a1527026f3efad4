"""pmtiqa_deploy.inputs at the edges: symbolic links that are broken or loop, folders that
cannot be listed, pipes, names that are not UTF-8 in folders and list files, quoted list
lines, the count of skipped files, and the output-is-an-input check."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from scoring_inputs import null_model_dir, photo

from pmtiqa_deploy.errors import OutputRefused
from pmtiqa_deploy.inputs import Inputs, check_output_not_input, iter_paths, unreadable_reason
from pmtiqa_deploy.output import quote_path
from pmtiqa_deploy.score import Scorer


def _png(path: Path, seed: int = 0) -> Path:
    import cv2

    ok, data = cv2.imencode(".png", photo(64, 64, seed))
    assert ok
    Path(path).write_bytes(data.tobytes())
    return Path(path)


@pytest.fixture
def links(tmp_path) -> Path:
    folder = tmp_path / "links"
    folder.mkdir()
    _png(folder / "a.png")
    os.symlink("a.png", folder / "b_link.png")
    os.symlink("nowhere.jpg", folder / "c_dangling.jpg")
    os.symlink("d_loop2.jpg", folder / "d_loop1.jpg")
    os.symlink("d_loop1.jpg", folder / "d_loop2.jpg")
    os.symlink(".", folder / "e_dir_loop")  # a link to a folder is not followed
    os.mkfifo(folder / "f_pipe.png")  # never opened: reading it would block
    (folder / "g_notes.txt").write_text("skipped for its extension\n")
    (folder / ".hidden.png").write_bytes(b"")
    _png(Path(os.fsdecode(os.fsencode(folder) + b"/h_caf\xe9.png")), 1)
    return folder


def test_broken_links_are_inputs_and_others_are_counted(links):
    inputs = Inputs([links])
    names = [p.name for p in inputs]
    assert names == ["a.png", "b_link.png", "c_dangling.jpg", "d_loop1.jpg", "d_loop2.jpg",
                     os.fsdecode(b"h_caf\xe9.png")]
    assert inputs.skipped == 3  # the folder link, the pipe, the .txt (hidden files are not counted)
    assert unreadable_reason(links / "c_dangling.jpg") == \
        "a broken symbolic link (its target nowhere.jpg does not exist)"
    assert "loops" in unreadable_reason(links / "d_loop1.jpg")
    assert unreadable_reason(links / "f_pipe.png").startswith("not a regular file")
    assert unreadable_reason(links / "a.png") is None


def test_each_link_gets_its_row_and_good_images_beside_them_score(links, tmp_path):
    with Scorer.open(null_model_dir(tmp_path / "model"), "null") as scorer:
        rows = {Path(r.path).name: r for r in scorer.score_files(iter_paths([links]))}
    assert rows["a.png"].score == rows["b_link.png"].score is not None
    assert rows[os.fsdecode(b"h_caf\xe9.png")].score is not None
    assert rows["c_dangling.jpg"].error == \
        "cannot read file: a broken symbolic link (its target nowhere.jpg does not exist)"
    assert rows["d_loop2.jpg"].error == "cannot read file: a symbolic link that loops (it leads back to itself)"


def test_list_files_take_raw_bytes_and_quoted_lines(links, tmp_path):
    odd = os.fsencode(links) + b"/h_caf\xe9.png"
    spaced = _png(links / " spaced .png")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"# comment\n" + odd + b"\n\n" + quote_path(odd).encode() + b"\n"
                        + quote_path(spaced).encode() + b"\r\n")
    assert [os.fsencode(p) for p in iter_paths([f"@{listing}"])] == [odd, odd, os.fsencode(spaced)]


def test_output_that_is_an_input_is_refused(links, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("x\n")
    with pytest.raises(OutputRefused, match="is the list file"):
        check_output_not_input(listing, [f"@{listing}"])
    with pytest.raises(OutputRefused, match="is the list file"):
        check_output_not_input(tmp_path / "." / "list.txt", [], [listing])
    with pytest.raises(OutputRefused, match="is the input"):
        check_output_not_input(links / "b_link.png", [str(links / "a.png")])  # through the link
    with pytest.raises(OutputRefused, match="scanned folder"):
        check_output_not_input(links / "new" / "scores.JPG", [str(links)])
    check_output_not_input(links / "scores.csv", [str(links)])  # not an image extension
    check_output_not_input(links / ".cache" / "x.png", [str(links)])  # hidden: never scanned
    check_output_not_input(tmp_path / "elsewhere.png", [str(links)])


CHILD = """
import os, sys, difflib  # imported before dropping privileges: nobody cannot read them
import tqdm, pmtiqa_deploy.cli, pmtiqa_deploy.score, pmtiqa_deploy.backends.null
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
pmtiqa_deploy.cli.score_command(sys.argv[1:])
"""


def test_permission_denied_folder_row_and_output_error():
    """As an unprivileged user (root drops to nobody in a child process): a folder that
    cannot be listed and a file that cannot be opened get an error row each, and an
    output folder without write permission ends the run with one line, exit 2."""
    root = Path(tempfile.mkdtemp(prefix="pmtiqa-perm-"))
    try:
        root.chmod(0o755)
        _png(root / "a.png")
        (root / "locked").mkdir(mode=0o700)
        _png(root / "locked" / "b.png")
        model = null_model_dir(root / "model")
        (root / "locked").chmod(0o000 if os.geteuid() != 0 else 0o700)
        for path in (root / "a.png", model / "model.json"):
            path.chmod(0o644)
        _png(root / "c_private.png").chmod(0o600 if os.geteuid() == 0 else 0o000)
        writable = root / "out"
        writable.mkdir(mode=0o777)
        writable.chmod(0o777)

        def score(output):
            return subprocess.run([sys.executable, "-c", CHILD, str(root), "--model", str(model),
                                   "--backend", "null", "-o", str(output)],
                                  capture_output=True, text=True, timeout=120)

        done = score(writable / "rows.csv")
        assert done.returncode == 1, done.stderr
        lines = (writable / "rows.csv").read_text().splitlines()
        assert f"{root / 'locked'},,,cannot read file: a folder that cannot be listed (Permission denied)" in lines
        assert f"{root / 'c_private.png'},,,cannot read file (Permission denied)" in lines
        denied = score(root / "rows.csv")
        assert denied.returncode == 2 and "Traceback" not in denied.stderr
        assert denied.stderr.strip() == f"error: cannot write {root}/rows.csv.partial (Permission denied)"
    finally:
        (root / "locked").chmod(0o700)
        shutil.rmtree(root)
