#!/usr/bin/env python3
"""Install this workflow's Slurm profile so that `snakemake --profile slurm` finds it.

Snakemake looks a bare profile name up in the working directory, then in the user's config
folder ($XDG_CONFIG_HOME/snakemake, usually ~/.config/snakemake), then in the site's
($XDG_CONFIG_DIRS, usually /etc/xdg/snakemake). The repository keeps its profile under
profiles/slurm (its top level has no `slurm` folder), so this script writes a copy of
profiles/slurm/config.yaml to <user config>/slurm/config.yaml, or with --site to the site
folder for everyone on the cluster, and fills in your partition(s) and account:

    python profiles/slurm/install.py --partition cpu --gpu-partition gpu --account myproject
    python profiles/slurm/install.py      # after a `git pull`: refresh the copy, keep your values
    snakemake --profile slurm             # from the repository root

A copy, not a link: your partition and account stay out of the repository. It never overwrites
a `slurm` profile that it did not write (use --name for another name, or --force).
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "config.yaml"
MARKER = "# Installed by profiles/slurm/install.py"
SETTINGS_PREFIX = "# install.py settings: "
# the commented lines of config.yaml that take a value: placeholder -> setting
PLACEHOLDER = re.compile(r"^(?P<indent>\s*)# (?P<key>slurm_partition|slurm_account): "
                         r"<(?P<slot>partition|account|gpu-partition)>"
                         r"(?P<rest>\s+#.*)?$")
SLOTS = {"partition": "partition", "account": "account", "gpu-partition": "gpu_partition"}
NAME = re.compile(r"^[A-Za-z0-9_.,-]+$")


def config_dirs() -> tuple[Path, Path]:
    """(user, site) config folders of Snakemake, found the way Snakemake finds them."""
    try:
        from platformdirs import AppDirs  # what snakemake.common.get_appdirs uses
        dirs = AppDirs("snakemake", "snakemake")
        return Path(dirs.user_config_dir), Path(dirs.site_config_dir)
    except ImportError:
        home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        site = (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)[0]
        return Path(home) / "snakemake", Path(site) / "snakemake"


def render(settings: dict) -> str:
    """config.yaml with the placeholders of the given settings filled in."""
    lines = [MARKER + f" from {SOURCE}; rerun it after changing that file.",
             SETTINGS_PREFIX + json.dumps(settings, sort_keys=True)]
    for line in SOURCE.read_text().splitlines():
        m = PLACEHOLDER.match(line)
        value = settings.get(SLOTS[m["slot"]]) if m else None
        if value:
            # quoted twice: Snakemake evaluates resource values as Python ("int" would be a type)
            line = f"{m['indent']}{m['key']}: \"'{value}'\"{m['rest'] or ''}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def previous_settings(path: Path) -> dict | None:
    """The settings of a copy this script wrote, None if ``path`` is not one."""
    text = path.read_text()
    if not text.startswith(MARKER):
        return None
    for line in text.splitlines():
        if line.startswith(SETTINGS_PREFIX):
            return json.loads(line[len(SETTINGS_PREFIX):])
    return {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--partition", help="partition of every job (CPU jobs, and GPU jobs without --gpu-partition)")
    p.add_argument("--gpu-partition", help="partition of the GPU jobs (training, inference)")
    p.add_argument("--account", help="Slurm account charged for the jobs")
    p.add_argument("--name", default="slurm", help="profile name (default: slurm, i.e. `--profile slurm`)")
    p.add_argument("--site", action="store_true",
                   help="install for every user (site config folder; needs write access)")
    p.add_argument("--dest", type=Path, help="install into this folder instead (a profile folder)")
    p.add_argument("--force", action="store_true", help="overwrite a profile that this script did not write")
    p.add_argument("--print", action="store_true", dest="show", help="print the profile instead of writing it")
    a = p.parse_args(argv)

    given = {"partition": a.partition, "gpu_partition": a.gpu_partition, "account": a.account}
    for key, value in given.items():
        if value is not None and value != "" and not NAME.match(value):
            p.error(f"--{key.replace('_', '-')}: {value!r} is not a Slurm name (letters, digits, _ . , -)")
    user, site = config_dirs()
    dest = a.dest or (site if a.site else user) / a.name
    target = dest / "config.yaml"

    settings = {}
    if target.exists():
        previous = previous_settings(target)
        if previous is None and not a.force:
            print(f"{target} exists and was not written by this script; not touching it. "
                  f"Use --name <other> (then `snakemake --profile <other>`) or --force.", file=sys.stderr)
            return 1
        settings = previous or {}
    settings.update({k: v for k, v in given.items() if v is not None})  # "" clears a value
    settings = {k: v for k, v in settings.items() if v}
    text = render(settings)
    if a.show:
        sys.stdout.write(text)
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    chosen = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
    print(f"Installed {target} ({chosen or 'no partition or account: the default partition, no account'}).")
    print(f"Run `snakemake --profile {a.name}` from the repository root.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
