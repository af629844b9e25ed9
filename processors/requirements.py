"""One clear ImportError naming what to `pip install`, for the packages the processors need beyond
transformers, torch and numpy: PyAV (decoding videos) and pillow (the image processor).

Saved model directories load these files with `trust_remote_code=True` where this package is not
installed, so an environment may lack them; the error then lists every one that is missing at once.
"""

import importlib.util

# import name -> pip name
OPTIONAL_PACKAGES = {"av": "av", "PIL": "pillow"}


def missing_packages():
    """pip names of the optional packages that cannot be imported here."""
    missing = []
    for module, pip_name in OPTIONAL_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pip_name)
    return missing


def require(module, purpose):
    """Raise an ImportError saying what to install if `module` (a key of OPTIONAL_PACKAGES) is missing."""
    missing = missing_packages()
    if OPTIONAL_PACKAGES[module] in missing:
        raise ImportError(
            f"{purpose} needs {OPTIONAL_PACKAGES[module]}, which is not installed: pip install {' '.join(missing)} "
            "(VideoMamba's processors need torch, transformers, numpy, av and pillow)."
        )


__all__ = ["OPTIONAL_PACKAGES", "missing_packages", "require"]
