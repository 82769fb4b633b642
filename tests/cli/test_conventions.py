"""What every command shares: --version, --json - on standard output, files with the user's
umask, one error line for argparse's refusals and the library's, paths printed as given."""

from __future__ import annotations

import json
import os
import stat

import pytest

from exactforge.cli import main


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        from exactforge.cli import build_parser

        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    import exactforge

    assert capsys.readouterr().out.strip() == f"exactforge {exactforge.__version__}"
    assert main(["--version"]) == 0


def test_json_dash_is_standard_output(capsys, tmp_path):
    assert main(["info", "--json", "-"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["version"]  # standard output holds the JSON document alone
    assert not (tmp_path / "-").exists() and not os.path.exists("-")
    trace = str(tmp_path / "t")
    assert main(["train", "--model", "logreg", "--steps", "2", "--out", trace, "--quiet", "--json", "-"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["steps"] == 2
    assert "recorded 2 steps" in out.err  # the summary moved to stderr


def test_files_get_the_users_umask(tmp_path, umask_022):
    trace, report = str(tmp_path / "t"), str(tmp_path / "v.json")
    assert main(["train", "--model", "logreg", "--steps", "2", "--out", trace, "--quiet"]) == 0
    assert main(["verify", trace, "--json", report, "--quiet"]) == 0
    for path in (report, os.path.join(trace, "manifest.json"), os.path.join(trace, "records", "00000000.json")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


@pytest.mark.parametrize(
    "argv, kind",
    [
        (["train", "--steps", "0", "--out", "x"], "error: argument --steps:"),  # argparse
        (["verify", "no-such-trace"], "invalid:"),  # the verifier
        (["train", "--model", "fcn", "--hidden", "a,b", "--out", "x"], "error: --hidden:"),  # the library
    ],
)
def test_one_error_line(capsys, tmp_path, monkeypatch, argv, kind):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no usage block
    assert err.startswith(f"exactforge {argv[0]}: {kind}"), err


def test_an_unwritable_output_names_the_path_given(capsys, tmp_path):
    target = str(tmp_path / "missing" / "r.json")
    assert main(["info", "--json", target]) == 2
    err = capsys.readouterr().err
    assert target in err and ".tmp-" not in err, err


def test_printed_paths_have_no_doubled_slash(capsys, tmp_path):
    out = str(tmp_path / "s") + "/"
    argv = ["repro", "--batch-sizes", "8", "--conditions", "permute", "--repeats", "1", "--steps", "2"]
    assert main(argv + ["--matrix-steps", "0", "--out", out, "--quiet"]) == 0
    assert "//" not in capsys.readouterr().out
