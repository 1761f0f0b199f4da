"""`podium demo` end to end on scikit-learn's digits, one epoch."""
from podium.cli import main


def test_demo_prints_table_and_writes_submission(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "demo dir"), "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "macro F1" in out and "test (never seen)" in out
    subs = list((tmp_path / "demo dir" / "runs").rglob("submission.csv"))
    assert len(subs) == 1 and len(subs[0].read_text().splitlines()) == 361  # header + 360 held-out digits
