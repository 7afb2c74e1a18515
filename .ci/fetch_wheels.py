"""Download every wheel the images install into docker/wheels, with the host's pip and its
configuration (where the CPU build of torch lies), so image builds in CI need no index."""
import subprocess
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"]) + project["optional-dependencies"]["demo"]
requirements += ["nvidia-pytriton==0.7.0", "setuptools>=68", "wheel"]
requirements += [line for line in (root / "docker/requirements-serve.txt").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
if len(sys.argv) > 1:  # pin torch (e.g. the CPU build in pip's find-links) in place of every range
    requirements = [r for r in requirements if not r.startswith("torch")] + [sys.argv[1]]
subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(root / "docker/wheels"), *requirements],
               check=True)
