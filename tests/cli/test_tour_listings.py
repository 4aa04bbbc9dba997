"""Every listing the tour shows runs as shown, copied into a file (issue 13, item 8).

The listing is taken from what the tour prints (``polyproc._tour.listing``, the
same text ``run_section`` shows after the "│" gutter), written to a file and run
as a script with this worktree's polyproc; it must exit 0 and print what the tour
itself prints for that section.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tour import EXPECTED  # tests/cli is on sys.path (rootdir import mode)

from polyproc._tour import SECTIONS, listing, run_section

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_tour_prints_exactly_the_listing() -> None:
    """What is tested below is what a user sees: the listing is the printed code."""
    from polyproc._tour import _print_code

    for s in SECTIONS:
        out = io.StringIO()
        _print_code(s, out)
        shown = "\n".join(ln[4:] for ln in out.getvalue().splitlines()).strip()
        assert shown == listing(s).strip()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("section", [s.name for s in SECTIONS])
def test_a_copied_listing_runs_and_prints_what_the_tour_prints(
    section: str, tmp_path: Path
) -> None:
    if section == "shared-array":
        pytest.importorskip("numpy")
    script = tmp_path / f"{section.replace('-', '_')}.py"
    script.write_text(listing(by_name(section)))
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("POLYPROC_START_METHOD", None)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip(), f"the listing printed nothing:\n{proc.stderr}"
    for text in EXPECTED[section]:
        assert text in proc.stdout, f"{text!r} missing from:\n{proc.stdout}\n{proc.stderr}"


def test_run_section_output_keeps_its_shape() -> None:
    """The tour's own run is unchanged: title, intro, gutter listing, then the demo."""
    out = io.StringIO()
    assert run_section(by_name("pipe"), out=out) == "ok"
    text = out.getvalue()
    assert "[polyproc tour pipe]" in text and "  │ def send_test(conn: Any) -> None:" in text
    assert text.index("  │ ") < text.index("  running ...") < text.index("✓ pipe ran")


def by_name(name: str):  # type: ignore[no-untyped-def]
    return {s.name: s for s in SECTIONS}[name]
