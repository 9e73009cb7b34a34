"""The options of `ada train`: one declaration per config field, and what is derived from it — the
flags and their help, `--set`, `--help-config`, YAML presets given by path, the presets' defaults,
and `--cfg=auto` on a machine without a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ada import builtin, config
from ada.cli import main, train_command
from augment import PRESETS as AUGPIPE_PRESETS
from tests.conftest import REPO

# The options of the official stylegan2-ada-pytorch train.py, which keep their names and meanings.
OFFICIAL = {
    "--outdir", "--gpus", "--snap", "--metrics", "--seed", "--dry-run", "--data", "--cond", "--subset", "--mirror",
    "--cfg", "--gamma", "--kimg", "--batch", "--aug", "--p", "--target", "--augpipe", "--resume", "--freezed",
    "--fp32", "--nhwc", "--nobench", "--allow-tf32", "--workers",
}
TINY = ["--cfg", "tiny", "--data", "lfw-faces16"]


def cli(*args: str, cwd: Path = REPO, module: bool = False) -> subprocess.CompletedProcess:
    """train.py (or `python -m ada` with module=True) in its own process, with a wide terminal for --help."""
    command = [sys.executable, "-m", "ada"] if module else [sys.executable, str(REPO / "train.py")]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """train.py's entry point in this process (for the many one-line refusals): exit 1, one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args), prog_name="train.py", command=train_command)
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def dry_run_options(result: subprocess.CompletedProcess) -> dict:
    """The resolved options a dry run prints (a JSON object), checked to be the whole of it."""
    assert result.returncode == 0, result.stderr
    text = result.stdout
    return json.loads(text[text.index("{\n"): text.index("\n}\n") + 2])


def unwrapped(help_text: str) -> str:
    """--help with its wrapped lines joined (click also breaks lines after a hyphen)."""
    return " ".join(re.sub(r"-\n\s+", "-", help_text).split())


# ----- the declarations -----


def test_every_field_is_declared_with_help_and_the_official_flags_keep_their_names():
    settings = config.settings().values()
    assert all(s.option.help for s in settings)
    official = {s.option.flag for s in settings if s.option.official} | {"--dry-run"}
    assert official == OFFICIAL
    # The train command's options are exactly the declared flags, plus -n, --set and --help-config.
    params = {opt for p in train_command.params for opt in p.opts if opt.startswith("--")}
    assert params == {s.option.flag for s in settings if s.option.flag} | {"--dry-run", "--set", "--help-config"}


# Flags that the quality work, tools and reliability2 added to the old hand-kept option list, each now a
# declaration on the field it sets (and whether continuing a run may change it).
PORTED = {
    "--ada-start-kimg": ("aug.ada_start_kimg", True), "--aug-extra": ("aug.extra", True),
    "--tensorboard": ("tensorboard", False), "--pr-net": ("pr_net", False),
}


def test_flags_of_the_old_option_list_are_declared_on_their_fields(tmp_path, capsys):
    by_flag = {s.option.flag: (s.key, s.option.defines_run) for s in config.settings().values() if s.option.flag}
    assert {flag: by_flag.get(flag) for flag in PORTED} == PORTED
    main([*TINY, "-n", "--outdir", str(tmp_path / "runs"), "--ada-start-kimg", "2", "--aug-extra", "blur",
          "--tensorboard=0", "--pr-net", "vgg16.pt"], prog_name="train.py", command=train_command)
    out = capsys.readouterr().out
    options = json.loads(out[out.index("{\n"): out.index("\n}\n") + 2])
    assert options["aug"]["ada_start_kimg"] == 2.0 and options["aug"]["extra"] == "blur"
    assert options["tensorboard"] is False and options["pr_net"] == "vgg16.pt"
    assert "--pr-net= is empty" in cli_error(capsys, *TINY, "--pr-net=", "-n")
    assert "--ada-start-kimg can only be given with --aug=ada" in cli_error(
        capsys, *TINY, "--aug", "noaug", "--ada-start-kimg", "1", "-n")


def test_help_shows_the_command_the_choices_and_from_preset_where_the_preset_decides():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: train.py [OPTIONS]")
    text = unwrapped(result.stdout)
    for flag in ("--kimg KIMG", "--batch INT", "--gamma FLOAT", "--snap TICKS", "--tick KIMG", "--workers INT",
                 "--metrics LIST", "--batch-gpu INT"):
        assert re.search(re.escape(flag) + r" [^\[]*\[default: from preset\]", text), flag
    assert "--aug [ada|noaug|fixed|diffaug]" in text and "[default: ada]" in text
    assert f"--augpipe [{'|'.join(AUGPIPE_PRESETS)}]" in text
    assert "--target FLOAT ADA target value of the overfitting heuristic [default: 0.6]" in text
    assert "--ada-kimg KIMG ADA speed: kimg for p to move by 1 [default: 500; 100 when fine-tuning]" in text
    assert f"({', '.join(config.available_presets())})" in text and "cpu, " in text
    assert f"({', '.join(builtin.NAMES)})" in text and "lfw-faces16" in text
    # The declared defaults that no preset sets are shown as they are.
    assert "--val FLOAT Share of images withheld for the r_v monitor [default: 0.05]" in text
    assert "[default: 50]" not in text and "[default: 3]" not in text  # the old --snap and --workers claims


def test_ada_without_arguments_prints_its_help():
    result = cli(module=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ada [OPTIONS]") and "train" in result.stdout and not result.stderr


def test_help_config_lists_every_field_with_the_presets_value():
    result = cli("--cfg", "cifar", "--help-config")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[3:]}
    assert list(rows) == list(config.settings())
    cifar = config.load_preset("cifar")
    assert rows["loss.pl_weight"][1:4] == ["a", "number", "0"] and cifar.loss.pl_weight == 0
    assert rows["model.d_architecture"][2] == "orig" and rows["batch"][3] == "64" and rows["batch"][4] == "--batch"
    assert rows["optim.lr"][4] == "--set"


# ----- --set -----


def test_set_reaches_fields_without_a_flag_and_types_them():
    result = cli(*TINY, "-n", "--set", "loss.pl_weight=0", "--set", "optim.lr=0.002", "--set", "model.map_layers=3",
                 "--set", "optim.ema_rampup=null", "--set", "mirror=1")
    options = dry_run_options(result)
    assert options["loss"]["pl_weight"] == 0.0 and isinstance(options["loss"]["pl_weight"], float)
    assert options["optim"]["lr"] == 0.002 and options["optim"]["ema_rampup"] is None
    assert options["model"]["map_layers"] == 3 and options["mirror"] is True


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--set", "optim.lr=fast"], "--set optim.lr=fast: 'fast' is not a number"),
        (["--set", "model.map_layers=2.5"], "'2.5' is not an integer"),
        (["--set", "loss.bogus=1"], "'loss.bogus' is not a config field you can set; see `ada train --help-config`"),
        (["--set", "cfg=tiny"], "choose the preset with --cfg"),
        (["--set", "optim.lr"], "write KEY=VALUE"),
        (["--set", "loss.r1_gamma=1", "--gamma", "2"], "--set loss.r1_gamma and --gamma both set loss.r1_gamma"),
        (["--set", "optim.lr=-1"], "optim.lr=-1.0 must be positive"),
    ],
)
def test_bad_set_is_one_line(tmp_path, capsys, args, pattern):
    line = cli_error(capsys, *TINY, "--outdir", str(tmp_path / "runs"), *args)
    assert pattern in line, line
    assert not (tmp_path / "runs").exists()


# ----- presets as files -----


def test_cfg_takes_a_yaml_file_checked_like_the_presets(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("kimg: 3\nbatch: 8\nloss:\n  r1_gamma: 0.5\n  pl_weight: 0\nmodel:\n  channel_base: 512\n")
    result = cli("--cfg", str(preset), "--data", "lfw-faces16", "-n", "--outdir", str(tmp_path / "runs"), cwd=tmp_path)
    options = dry_run_options(result)
    assert options["cfg"] == str(preset)
    assert (options["kimg"], options["batch"], options["loss"]["r1_gamma"], options["loss"]["pl_weight"]) == (
        3.0, 8, 0.5, 0.0)
    assert options["model"]["channel_base"] == 512 and options["model"]["z_dim"] == 512  # the rest: the defaults
    # The run directory is named by the file's stem.
    assert "runs/NNNNN-lfw-faces16-mine-ada" in result.stdout
    # A relative path works too.
    assert dry_run_options(cli("--cfg", "mine.yaml", "--data", "lfw-faces16", "-n", cwd=tmp_path))["kimg"] == 3.0


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("kimg: [1\n", "not valid YAML (line 2"),
        ("- kimg\n", "a preset is a mapping of options (key: value), not a list"),
        ("kimg: fast\n", "kimg: 'fast' is not a number"),
        ("loss:\n  bogus: 1\n", "unknown option 'loss.bogus'; known: loss.d_reg_interval"),
        ("loss: 3\n", "'loss' must be a mapping of options"),
        ("cfg: tiny\n", "unknown option 'cfg'"),
        # Values out of range are found by the validation of every resolved configuration.
        ("batch: 0\n", "--batch=0 must be at least 1"),
    ],
)
def test_bad_yaml_preset_is_one_line(tmp_path, capsys, text, pattern):
    (tmp_path / "bad.yaml").write_text(text)
    line = cli_error(capsys, "--cfg", str(tmp_path / "bad.yaml"), "--data", "lfw-faces16", "-n")
    assert pattern in line, line


def test_cfg_path_that_does_not_exist_names_the_presets(tmp_path, capsys):
    line = cli_error(capsys, "--cfg", str(tmp_path / "nope.yaml"), "--data", "lfw-faces16")
    assert "no such file" in line and "tiny" in line and "cpu" in line


# ----- --cfg=auto and the machine -----


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cpu preset replaces auto only without CUDA")
def test_auto_without_a_gpu_takes_the_cpu_preset_and_says_so():
    result = cli("--data", "lfw-faces16", "-n")
    options = dry_run_options(result)
    said = [line for line in result.stdout.splitlines() if "--cfg=auto" in line]
    assert len(said) == 1 and "uses the 'cpu' preset" in said[0] and "--cfg=NAME" in said[0]
    cpu = config.load_preset("cpu")
    assert options["cfg"] == "cpu" and (options["kimg"], options["batch"]) == (cpu.kimg, cpu.batch)
    # A preset the user names is taken as it is, without a word.
    result = cli("--data", "lfw-faces16", "--cfg", "paper256", "-n")
    assert dry_run_options(result)["cfg"] == "paper256" and "--cfg=auto" not in result.stdout
