#!/usr/bin/env bash
# The test command of the README: makes .venv if it is missing, installs the project with its
# test extra, runs the linters (a lint failure fails the command), then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[test]"
# headless Chromium for the report's browser test (tests/test_report.py), from Debian's packages
if [ ! -x /usr/bin/chromium ]; then
    apt-get install -y -qq chromium > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium > /dev/null; }
fi
.venv/bin/snakemake --lint        # Snakemake's best practices for the Snakefile and rules/*.smk
.venv/bin/snakefmt --check .      # formatting of the Snakefile and rules/*.smk (pyproject.toml)
.venv/bin/ruff check .            # Python lint (pyproject.toml)
exec .venv/bin/python -m pytest -q "$@"
