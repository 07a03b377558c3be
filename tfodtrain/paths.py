"""Where the packaged Hydra configs live, from a source checkout or an installed wheel."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The `configs/` directory: inside the package in a wheel, at the repo top in a checkout."""
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"tfodtrain's configs/ directory was not found next to {_PACKAGE_DIR}; reinstall the package"
    )
