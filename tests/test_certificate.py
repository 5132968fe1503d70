"""watchme/certificate.py: the certificate check of tasks/tls.py."""

from __future__ import annotations


def test_certbot_symlinks_count_as_present(tmp_path):
    """tasks/tls.py's fact: `test -f` follows certbot's live/ -> archive/ symlinks."""
    import subprocess

    from watchme.certificate import MissingFiles

    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "fullchain1.pem").write_text("x")
    (tmp_path / "fullchain.pem").symlink_to(tmp_path / "archive" / "fullchain1.pem")
    (tmp_path / "dangling.pem").symlink_to(tmp_path / "archive" / "gone.pem")
    paths = [str(tmp_path / n) for n in ("fullchain.pem", "dangling.pem", "none.pem")]
    out = subprocess.run(["sh", "-c", MissingFiles().command(paths)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert MissingFiles().process(out) == paths[1:]
