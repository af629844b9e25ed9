"""Run a script where this package cannot be imported, as on a machine that has only a saved model
directory: what `trust_remote_code=True` loading must work with."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Prepended to every script: `import modeling_videomamba` fails, and the checkout is off sys.path.
BLOCK_PACKAGE = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class _BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_videomamba":
                raise ImportError(name + " is blocked for this test")
            return None

    sys.meta_path.insert(0, _BlockPackage())
    sys.path = [p for p in sys.path if p not in ("", ".", {str(REPO)!r})]
    try:
        import modeling_videomamba  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the package is still importable")
    """
)


def run_without_package(script: str, *args, cwd) -> subprocess.CompletedProcess:
    """Runs `script` (dedented) after BLOCK_PACKAGE in a fresh interpreter with a bare environment (offline,
    its own HF cache under `cwd`); `args` become sys.argv[1:]."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(Path(cwd) / "hf_home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}
    code = BLOCK_PACKAGE + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
