"""Each option said once: the CLI's parameters come from the configs' fields, with the fields'
defaults; cli.py and api.py restate none; the README's command reference names exactly each
command's flags, with the declared defaults."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import typer.main

from skipat_deploy import api
from skipat_deploy.models.checkpoint import LoadConfig
from skipat_deploy.cli import app
from skipat_deploy.core.options import KEY, declared
from skipat_deploy.params import Input

ROOT = Path(__file__).resolve().parents[1]
CALLBACKS = {c.name: c.callback for c in app.registered_commands}
CLICK = typer.main.get_command(app).commands


def _config_params():
    for name, cb in CALLBACKS.items():
        for p in cb.params:
            if p.cls is not None:
                yield name, p


def test_every_cli_default_is_its_fields():
    checked = 0
    for name, p in _config_params():
        field = p.cls.__dataclass_fields__[p.field]
        # the command's own default where its module says so (commands.profile.QUANTIZE)
        default = getattr(p.base, p.field) if p.base is not None else field.default
        if p.opt.parse is not None or p.renamed:
            assert p.default is None, (name, p.name)  # None: the field's default
        elif p.opt.repeat:
            assert p.default == list(default), (name, p.name)
        else:
            assert p.default == default, (name, p.name)
        click_param = next(c for c in CLICK[name].params if c.name == p.name)
        assert click_param.default == p.default or click_param.default == tuple(p.default or ()), (name, p.name)
        checked += 1
    assert checked > 100


def test_out_defaults_are_the_api_functions():
    for name, cb in CALLBACKS.items():
        for p in cb.params:
            if p.name == "out":
                fn = getattr(api, {"compile": "compile"}.get(name, name))
                assert str(p.default) == inspect.signature(fn).parameters["out_dir"].default


def _literals(tree) -> set:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and not isinstance(n.value, bool) and n.value is not None}


def test_cli_and_api_restate_no_declared_default():
    """No config field's default (a number or a word like w8a16) is written in cli.py or in the
    signature defaults of api.py: they come from the configs."""
    defaults = set()
    for _, p in _config_params():
        d = getattr(p.base, p.field) if p.base is not None else p.cls.__dataclass_fields__[p.field].default
        if isinstance(d, (int, float, str)) and not isinstance(d, bool):
            defaults.add(d)
    assert {"w8a16", "w8a8", "aimet", 64, 3600.0, "Galaxy S22"} <= defaults
    cli = ast.parse((ROOT / "skipat_deploy" / "cli.py").read_text())
    words = {d for d in defaults if isinstance(d, str)}
    assert not _literals(cli) & words, _literals(cli) & words
    numbers = {k.value.value for k in ast.walk(cli) if isinstance(k, ast.keyword) and k.arg != "total"
               and isinstance(k.value, ast.Constant) and isinstance(k.value.value, (int, float))
               and not isinstance(k.value.value, bool)}
    assert not numbers, numbers  # progress bars' totals aside, cli.py sets no number
    tree = ast.parse((ROOT / "skipat_deploy" / "api.py").read_text())
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        for d in fn.args.defaults + [d for d in fn.args.kw_defaults if d is not None]:
            if isinstance(d, ast.Constant) and d.value is not None:
                assert isinstance(d.value, str) and "/" in d.value or d.value in ("export", "inspect"), \
                    (fn.name, d.value)  # only the output folders, which are api's own


def test_no_api_function_takes_more_than_eight_parameters():
    for name in api.__all__:
        fn = getattr(api, name)
        if inspect.isfunction(fn):
            assert len(inspect.signature(fn).parameters) <= 8, name


def test_keyword_options_fill_the_configs_and_unknown_ones_are_refused(tmp_path):
    from skipat_deploy.quant import QuantizeConfig

    with pytest.raises(TypeError, match="num_calibs"):
        api.quantize(None, tmp_path, num_calibs=3)
    with pytest.raises(TypeError, match="bogus"):
        api.export(None, tmp_path, bogus=1)
    from skipat_deploy.core.options import fill

    opts = dict(num_calib=3, calib="x", rotate=False)
    q = fill(QuantizeConfig(), opts)
    assert (q.num_calib, q.calib_dir, q.rotate, opts) == (3, Path("x"), False, {})
    from skipat_deploy.measure.compare import CompareConfig

    # a repeatable option takes one value as the command line's single flag does
    assert fill(CompareConfig(), dict(resolution=112)).resolutions == (112,)
    assert fill(CompareConfig(), dict(resolutions=[112, 224])).resolutions == (112, 224)


def test_share_weights_with_hub_is_refused(tmp_path):
    from skipat_deploy.core.errors import UserError

    with pytest.raises(UserError, match="--share-weights.*--backend hub"):
        api.compile_all([tmp_path / "a.qdq.onnx", tmp_path / "b.qdq.onnx"], tmp_path,
                        share_weights=True, backend="hub")


def test_the_load_group_is_declared_once():
    flags = [f.name for f, _, _ in declared(LoadConfig)]
    assert flags[:5] == ["ckpt", "arch", "skip_indices", "head_dim", "allow_code_execution"]
    for name in ("export", "quantize", "compile", "evaluate", "bundle"):
        got = {p.field for p in CALLBACKS[name].params if p.cls is LoadConfig}
        assert got == set(flags), name


# -------------------------------------------------------------------------------------------
# The README's command reference.

def _readme_usage() -> dict[str, str]:
    """Command -> the text of its usage lines in the README (every ``skipat-deploy <cmd> ...``
    line of a code block under a ``### `skipat-deploy ...``` heading, with its continuations)."""
    text = (ROOT / "README.md").read_text()
    usage: dict[str, str] = {}
    for section in re.split(r"(?m)^### ", text)[1:]:
        if not section.startswith("`skipat-deploy"):
            continue
        block = re.search(r"```\n(.*?)```", section.split("\n## ")[0], re.S)
        if block is None:
            continue
        current = None
        for line in block.group(1).splitlines():
            m = re.match(r"skipat-deploy (\w+)", line)
            if m:
                current = m.group(1)
            if current:
                usage[current] = usage.get(current, "") + " " + line
    return usage


def _shown(text: str):
    """(flag, value or None, inside [ ]) for each flag in a usage text."""
    for m in re.finditer(r'(--[a-z][a-z0-9-]*)(?:\s+("[^"]*"|[^\s\[\]()|-][^\s\[\]()]*))?', text):
        depth = text[:m.start()].count("[") - text[:m.start()].count("]")
        yield m.group(1), (m.group(2) or "").strip('"') or None, depth > 0


def _cli_flags(name: str) -> list[tuple[str, ...]]:
    """Each option of ``name`` as its accepted spellings (a switch pair: either)."""
    return [tuple(p.opts + p.secondary_opts) for p in CLICK[name].params
            if p.param_type_name == "option" and "--help" not in p.opts and not p.hidden]


COMMON = ("--json", "--debug")  # every command's; the CLI section says so once


def test_readme_says_every_command_takes_json_and_debug():
    text = (ROOT / "README.md").read_text()
    intro = text.split("## CLI", 1)[1].split("###", 1)[0]
    assert all(f"`{f}`" in intro for f in COMMON)


@pytest.mark.parametrize("name", sorted(CLICK))
def test_readme_usage_names_exactly_the_commands_flags(name):
    usage = _readme_usage()
    assert name in usage, f"no usage line for {name} in the README"
    shown = {f for f, _, _ in _shown(usage[name])}
    spellings = _cli_flags(name)
    missing = [s[0] for s in spellings if s[0] not in COMMON and not shown & set(s)]
    unknown = shown - {f for s in spellings for f in s}
    assert not missing and not unknown, f"README {name}: missing {missing}, not flags {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(CLICK))
def test_readme_defaults_are_the_declared_ones(name):
    params = {p.flag or f"--{p.name}": p for p in CALLBACKS[name].params}
    by_flag = {}
    for p in CALLBACKS[name].params:
        if p.cls is not None:
            by_flag[p.flag] = p
        elif p.name == "out":
            by_flag["--out"] = p
    for flag, value, optional in _shown(_readme_usage()[name]):
        p = by_flag.get(flag)
        if p is None or not optional or value is None or value[0].isupper() and value.isalpha():
            continue
        default = p.default
        if p.cls is not None and p.opt.repeat or default is None or value in ("N", "DIR", "FILE", "F", "POINTS", "NAME", "R,G,B"):
            continue
        if "|" in value:
            choices = p.opt.choices if p.cls is not None else None
            if choices:
                assert set(value.split("|")) == set(choices), (name, flag)
            continue
        if isinstance(default, Path):
            assert value.rstrip("/") == str(default), (name, flag, value, default)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            assert float(value) == default, (name, flag, value, default)
        else:
            assert value == str(default), (name, flag, value, default)


def test_options_carry_their_facts_on_the_field():
    from skipat_deploy.quant import QuantizeConfig

    f = QuantizeConfig.__dataclass_fields__["num_calib"]
    assert f.default == 64 and "Calibration samples" in f.metadata[KEY].help
    assert all(KEY in f.metadata for f in dataclasses.fields(LoadConfig))


def test_reading_the_commands_and_configs_does_not_import_torch():
    """``--help`` and the API's configs are read without paying for torch (1.5-10 s)."""
    import subprocess
    import sys

    probe = ("import sys, skipat_deploy.cli, skipat_deploy.api; "
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('skipat_deploy.models.')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ("['skipat_deploy.models.checkpoint', 'skipat_deploy.models.config', "
                                   "'skipat_deploy.models.registry']")
    help_text = subprocess.run([sys.executable, "-c", "from skipat_deploy.cli import main; main()", "quantize", "--help"],
                               capture_output=True, text=True)
    assert help_text.returncode == 0 and "--num-calib" in help_text.stdout


QUANTIZER_FLAGS = {"--precision": "precision", "--num-calib": "num_calib", "--calib": "calib_dir",
                   "--quant-backend": "quant_backend"}
QUANTIZING_COMMANDS = ("quantize", "compile", "profile", "compare", "evaluate", "bundle")
# Flags that several configs declare on purpose, each with its own meaning there; any other
# flag declared twice must share one declaration's facts (device_option(), hub_timeout_option()).
OWN_MEANING = {
    "--resolution": "one size (the model made) or, repeatable, a model per size",
    "--device": "one target, or repeatable in bundle (a binary per device)",
    "--backend": "compile's compiler (local | hub) or where a latency is measured (auto | adb | hub | cpu)",
    "--eval": "quantize's held-out photos or compare's labelled dataset",
    "--npu-samples": "how many samples run through the NPU: reported (quantize), gated (compile), scored (evaluate)",
    "--num-samples": "evaluate's subset of a dataset or inspect's samples",
    "--runs": "timed runs of one model (profile) or of each pair (compare)",
    "--time-budget": "one pair (profile) or each pair per resolution (compare)",
    "--max-top1-drop": "the goal --precision auto keeps (quantize) or the gate evaluate applies",
}


def _declarations() -> dict[str, dict[tuple[type, str], set[str]]]:
    """flag -> {(config class, field): commands that take it}, over every command's parameters."""
    out: dict[str, dict] = {}
    for name, cb in CALLBACKS.items():
        for p in cb.params:
            if p.cls is not None and not p.renamed:
                out.setdefault(p.flag, {}).setdefault((p.cls, p.field), set()).add(name)
    return out


def test_the_quantizers_options_are_one_declaration_in_every_command_that_quantizes():
    from skipat_deploy.quant import QuantizeConfig

    decl = _declarations()
    for flag, field in QUANTIZER_FLAGS.items():
        assert list(decl[flag]) == [(QuantizeConfig, field)], (flag, decl[flag])
        assert decl[flag][(QuantizeConfig, field)] == set(QUANTIZING_COMMANDS), flag


def test_no_option_is_declared_twice():
    """A flag that two configs declare is the same declaration (same help, choices and default)
    unless it is one of OWN_MEANING, whose list is pinned here."""
    shared = set()
    for flag, fields in _declarations().items():
        if len(fields) < 2:
            continue
        facts = {(f.metadata[KEY].help, f.metadata[KEY].choices, repr(f.default))
                 for f in (cls.__dataclass_fields__[name] for cls, name in fields)}
        if len(facts) > 1:
            assert flag in OWN_MEANING, f"{flag} is declared {len(facts)} ways: {sorted(c.__name__ for c, _ in fields)}"
            shared.add(flag)
    assert shared == set(OWN_MEANING)


def test_a_renamed_flag_still_works_and_says_so(tmp_path, nano_ckpts):
    """quantize --backend is --quant-backend, compile --num-check is --npu-samples, compile
    --precision fp16 is --fp16: the old spellings are taken, with a notice, and are not in
    --help."""
    from typer.testing import CliRunner

    runner = CliRunner()
    r = runner.invoke(app, ["quantize", "--ckpt", str(nano_ckpts["vit_nano_patch16"]), "--backend", "tflite",
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--quant-backend 'tflite': choose one of aimet, ort" in r.output
    assert "--backend is now --quant-backend" in r.output
    assert "--backend " not in runner.invoke(app, ["quantize", "--help"]).output
    r = runner.invoke(app, ["compile", "--model", str(tmp_path / "none.qdq.onnx"), "--num-check", "0"])
    assert "--num-check is now --npu-samples" in r.output and "--npu-samples must be at least 1" in r.output


def test_command_help_has_no_hard_line_breaks():
    """A docstring's line breaks would show mid-sentence in `skipat-deploy --help`."""
    from typer.testing import CliRunner

    for name, cb in CALLBACKS.items():
        assert cb.__doc__ and "\n" not in cb.__doc__, name
    listing = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}).output
    assert "checked on the HTP simulator (local)" in " ".join(listing.replace("│", " ").split())
