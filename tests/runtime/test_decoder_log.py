"""Decoder noise: what OpenCV, libpng and libjpeg print for a bad file never reaches stderr,
in real processes (the capture works on file descriptor 2), decoding in parallel or not;
a failed row's error says what they said; everything else written to stderr still shows."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import pytest
from scoring_inputs import null_model_dir, photo

from pmtiqa_deploy.decoder_log import DECODER_PREFIXES, DecoderLog

NOISE = ("libpng", "[ WARN", "[ERROR", "Corrupt JPEG", "Premature end")


def _png(seed: int) -> bytes:
    ok, data = cv2.imencode(".png", photo(64, 80, seed))
    assert ok
    return data.tobytes()


def _jpeg(seed: int) -> bytes:
    ok, data = cv2.imencode(".jpg", photo(64, 80, seed))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> dict[str, Path]:
    """Files the decoders complain about (bad PNG data, a PNG that is only a signature and
    junk, a JPEG with a damaged scan that still decodes) and good ones."""
    folder = tmp_path_factory.mktemp("noisy")
    png = bytearray(_png(1))
    idat = png.find(b"IDAT")
    png[idat + 8:idat + 40] = bytes(b ^ 0x5A for b in png[idat + 8:idat + 40])
    jpeg = bytearray(_jpeg(2))
    scan = jpeg.find(b"\xff\xda")
    jpeg[scan + 40:scan + 48] = b"\xff\xd3" * 4  # restart markers where none belong
    files = {"bad_data.png": bytes(png), "junk.png": b"\x89PNG\r\n\x1a\n" + b"x" * 100,
             "damaged_scan.jpg": bytes(jpeg)}
    files.update({f"good_{i}.png": _png(10 + i) for i in range(6)})
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def _python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; stdout and stderr as bytes decoded to str, so a
    carriage return stays one (text mode would read it as a newline)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def test_libraries_do_print_without_the_capture(noisy):
    """The premise: OpenCV's imdecode prints for these files when nothing captures fd 2."""
    done = _python(f"""
        import cv2, numpy as np
        for path in {[str(noisy["bad_data.png"]), str(noisy["junk.png"])]!r}:
            cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    """)
    assert any(word in done.stderr for word in NOISE), done.stderr


def test_parallel_decodes_print_nothing_and_failures_say_why(noisy):
    done = _python(f"""
        import json, sys
        from concurrent.futures import ThreadPoolExecutor
        from pmtiqa_deploy.preprocess import decode_image
        from pmtiqa_deploy.errors import DecodeError

        def decode(path):
            try:
                return decode_image(path).shape
            except DecodeError as exc:
                return str(exc)

        paths = {[str(p) for p in noisy.values()] * 5!r}
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(decode, paths))
        sys.stderr.write("a line of our own\\n")
        print(json.dumps(dict(zip(paths, map(str, results)))))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "a line of our own\n"
    results = __import__("json").loads(done.stdout)
    assert "the decoder said: libpng error: " in results[str(noisy["bad_data.png"])]
    assert "not a readable image (corrupt data; the decoder said: " in results[str(noisy["junk.png"])]
    assert results[str(noisy["damaged_scan.jpg"])] == "(64, 80, 3)"  # a warning, not a failure
    assert all(results[str(p)] == "(64, 80, 3)" for name, p in noisy.items() if name.startswith("good"))


def test_stderr_of_the_process_still_shows_a_live_bar_and_a_traceback(noisy):
    """Carriage-return redraws pass at once, between decoder lines; an exception ending the
    program while decodes run in other threads still prints its message."""
    done = _python(f"""
        import sys, threading
        from pmtiqa_deploy.preprocess import decode_image

        def decode_a_while():
            for _ in range(300):
                try:
                    decode_image({str(noisy["junk.png"])!r})
                except Exception:
                    pass

        for _ in range(2):
            threading.Thread(target=decode_a_while).start()
        for step in range(50):
            sys.stderr.write(f"\\rstep {{step}}")
            sys.stderr.flush()
        raise SystemExit("stopped on purpose")
    """)
    assert done.returncode == 1
    assert "\rstep 0" in done.stderr and "\rstep 49" in done.stderr
    assert done.stderr.rstrip().endswith("stopped on purpose")
    assert not any(word in done.stderr for word in NOISE), done.stderr


def test_score_command_rows_carry_what_the_decoder_said(noisy, tmp_path_factory):
    model = null_model_dir(tmp_path_factory.mktemp("null-model-noise"))
    script = Path(sys.executable).parent / "pmtiqa-score"
    done = subprocess.run([str(script), str(noisy["bad_data.png"].parent), "--model", str(model),
                           "--backend", "null", "--workers", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "scored 7 of 9 image(s); 2 failed (see the error column)\n"
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(done.stdout))}
    assert "the decoder said: libpng error: " in rows["bad_data.png"]["error"]
    assert rows["junk.png"]["error"] and rows["damaged_scan.jpg"]["error"] == ""


def test_decoder_lines_are_held_back_from_text_around_them():
    """The reader's split, as bytes arrive: a bar's redraw has no newline and a decoder
    line may start right after it, or arrive in pieces."""
    log, forwarded = DecoderLog(), []
    log._forward = forwarded.append
    log._recorded = []
    tail = log._split(b"\rscoring 5%libpng warning: iCCP: known incorrect sRGB profile\n\rscoring 6%Corr")
    assert b"".join(forwarded) == b"\rscoring 5%\rscoring 6%" and tail == b"Corr"
    tail = log._split(tail + b"upt JPEG data: premature end of data segment\nplain text\n")
    assert tail == b"" and b"".join(forwarded).endswith(b"plain text\n")
    assert log._recorded == ["libpng warning: iCCP: known incorrect sRGB profile",
                             "Corrupt JPEG data: premature end of data segment"]
    assert all(prefix.strip() for prefix in DECODER_PREFIXES)
