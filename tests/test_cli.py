"""Tests for nlnoise.cli: one-line errors shared by nlnoise-train and nlnoise-audit."""

import pytest

from nlnoise import cli


def test_fail_prints_one_line_with_the_program_and_exits_2(capsys):
    assert cli.error("nlnoise-x", "one\n two") == 2
    assert capsys.readouterr().err == "nlnoise-x: error: one two\n"
    with pytest.raises(SystemExit) as e:
        cli.fail("nlnoise-x", "bad value\n  for --foo")
    assert e.value.code == 2
    assert capsys.readouterr().err == "nlnoise-x: error: bad value for --foo\n"


def test_a_missing_config_is_refused_only_where_it_is_required(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.check_config_file("p", ["p", "--workdir=w"])
    assert "--config is required" in capsys.readouterr().err
    assert cli.check_config_file("p", ["p", "--workdir=w"], required=False) is None
    assert cli.check_config_file("p", ["p", "--help"]) is None
    with pytest.raises(SystemExit):
        cli.check_config_file("p", ["p", f"--config={tmp_path}/nope.py:runlocal"])
    assert "no config file at" in capsys.readouterr().err
    f = tmp_path / "c.py"
    f.write_text("def get_config(arg=None):\n    return None\n")
    assert cli.check_config_file("p", ["p", "--config", f"{f}:v"]) == str(f)


def test_an_error_raised_in_the_config_file_names_its_file_and_line(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("x = 1\ny = undefined_name\n")
    with pytest.raises(NameError) as e:
        exec(compile(f.read_text(), str(f), "exec"), {})
    assert (cli.in_config_file(e.value, str(f))
            == f"{f}, line 2: NameError: name 'undefined_name' is not defined")
    with pytest.raises(SyntaxError) as e:
        compile("def (:\n", str(f), "exec")
    assert cli.in_config_file(e.value, str(f)).startswith(f"{f}, line 1: SyntaxError")
    assert cli.in_config_file(ValueError("elsewhere"), str(f)) is None
