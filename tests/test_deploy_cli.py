"""watchme/deploy.py: a failed connection ends the output with one line per host."""

from pathlib import Path

from watchme.deploy import failure_lines


def test_one_line_per_failed_host_with_the_fix():
    out = ("--> Connecting to hosts...\n"
           "    [203.0.113.10:2222]     Could not connect ([Errno None] Unable to connect)\n"
           "    [203.0.113.11] Authentication error (username=ubuntu, key=k) (Authentication failed.)\n"
           "    [203.0.113.12] SSH error (StrictPolicy: No host key for 203.0.113.12 found in known_hosts)\n"
           "--> pyinfra error: No hosts remaining!\n")
    assert failure_lines(out) == [
        "deploy failed: 203.0.113.10:2222: Could not connect ([Errno None] Unable to connect); "
        "fix: is the host up and its SSH port reachable?",
        "deploy failed: 203.0.113.11: Authentication error (username=ubuntu, key=k) "
        "(Authentication failed.); fix: check WATCHME_SSH_KEY and WATCHME_SSH_USER",
        "deploy failed: 203.0.113.12: SSH error (StrictPolicy: No host key for 203.0.113.12 found "
        "in known_hosts); fix: add the server's key to known_hosts (or WATCHME_KNOWN_HOSTS) after "
        "checking its fingerprint",
    ]


def test_no_line_for_other_output():
    assert failure_lines("--> Results:\n    [h] Success\n") == []


def test_runs_in_the_checkout_it_is_called_from(tmp_path):
    """A `pipx install .` CLI has no checkout of its own: the current directory is used."""
    from watchme.deploy import ROOT_DIR, checkout

    assert checkout(tmp_path) == Path(ROOT_DIR)  # an editable install still finds its own checkout
    (tmp_path / "deploy.py").write_text("")
    (tmp_path / "inventory.py").write_text("")
    assert checkout(tmp_path) == tmp_path


def test_full_and_unknown_options_skip_the_memo_but_pass_the_key(tmp_path):
    """`--full` / WATCHME_FULL=1 and options the memo does not cover always run pyinfra; the
    pyinfra run still gets the inputs key, so a qualifying run leaves a memo."""
    from watchme import noop_memo
    from watchme.deploy import ROOT_DIR as ROOT

    for args, env in ((["-y", "--full"], {}), (["-y"], {noop_memo.FULL_ENV: "1"}),
                      (["--dry"], {})):
        env = {"WATCHME_TESTHOST": str(tmp_path / "none.json"), **env}
        rc, why = noop_memo.fast_path(noop_memo.parse_args(args, env), ROOT, env)
        assert rc is None and why, args
        assert len(env[noop_memo.KEY_ENV]) == 64
    env = {"WATCHME_TESTHOST": str(tmp_path / "none.json")}
    rc, why = noop_memo.fast_path(noop_memo.parse_args(["-y"], env), ROOT, env)
    assert rc is None and "no readable test host state" in why
