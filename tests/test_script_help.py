"""Every flag of every workflow_scripts/ entry point has --help text (docs/running-a-stage.md
sends people to `python workflow_scripts/<script>.py --help`)."""
from __future__ import annotations

import json
import subprocess
import sys

from workflow_helpers import ROOT, snakemake_env

SCRIPTS = sorted((ROOT / "workflow_scripts").glob("*.py"))

# One interpreter for all scripts: run each as __main__ with --help, and take the parser its
# parse_args call builds (argparse's --help prints, then exits; the parser is read first).
PROBE = r"""
import argparse, json, runpy, sys

class Parsed(Exception):
    pass

def capture(self, args=None, namespace=None):
    raise Parsed(self)

argparse.ArgumentParser.parse_known_args = capture
report = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except Parsed as found:
        parser = found.args[0]
        report[path] = [[a.option_strings or [a.dest], a.help or ""] for a in parser._actions
                        if not isinstance(a, argparse._HelpAction)]
    except SystemExit:
        report[path] = None
print(json.dumps(report))
"""


def test_every_script_flag_has_help_text():
    assert SCRIPTS, "no workflow scripts found"
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, SCRIPTS)], cwd=ROOT, env=snakemake_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    missing = []
    for path in map(str, SCRIPTS):
        actions = report.get(path)
        assert actions, f"{path}: no argparse parser found"
        missing += [f"{path}: {'/'.join(names)}" for names, text in actions if not text.strip()]
    assert not missing, "flags without help text:\n" + "\n".join(missing)


def test_help_runs_for_each_script():
    # the real command a user types: exits 0 and prints the usage line
    for script in SCRIPTS[:2]:
        proc = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, env=snakemake_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), (script, proc.stderr[-2000:])
