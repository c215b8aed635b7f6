"""raydet.cluster.progress: in a file, one line now and then and one at the end; on a terminal, one bar redrawn in
place and the summary line."""

from __future__ import annotations

import io
import re
import time

from raydet.cluster.progress import Progress


def test_progress_in_a_file_prints_only_now_and_then():
    out = io.StringIO()
    with Progress("decode", total=3, stream=out, tty=False) as bar:
        for _ in range(3):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"decode: 3/3 images in \d+\.\d s", lines[0])
    out = io.StringIO()
    bar = Progress("decode", total=2, stream=out, tty=False, interval_s=0.0)
    bar.update(1)
    bar.close()
    bar.close()  # closing twice prints once
    assert out.getvalue().splitlines()[0].startswith("decode: 1/2 images, ") and len(out.getvalue().splitlines()) == 2


def test_progress_on_a_terminal_redraws_one_bar():
    out = io.StringIO()
    with Progress("eval", total=4, stream=out, tty=True) as bar:
        bar.update(2)
        time.sleep(0.01)
        bar.update(2)
    text = out.getvalue()
    # BAR_WIDTH 30: half done is 15 '#', all done 30
    assert "\reval: [" + "#" * 15 + "." * 15 + "] 2/4 images" in text
    assert "\reval: [" + "#" * 30 + "] 4/4 images" in text
    assert text.count("\n") == 1 and re.search(r"eval: 4/4 images in \d+\.\d s\n$", text)
