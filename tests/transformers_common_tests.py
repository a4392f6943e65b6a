"""
transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) for this project's test suite.

The transformers wheel ships no tests, but the sdist of the same version on PyPI holds `tests/test_modeling_common.py`
and `tests/test_configuration_common.py`. They are fetched with pip (the only network the suite needs, and only the
first time), unpacked into a cache folder and imported as the package `hf_transformers_tests`. Three modules they
import belong to mixins this project does not run (torch.export, `generate`, and the config-kwargs table of
`ConfigTester.check_config_arguments_init`) and are not in the sdist: they get empty stand-ins. `parameterized`,
which the common tests use, comes with the `test` extra.

Cache folder: `$XMODAL_TRANSFORMERS_TESTS_CACHE`, default `~/.cache/xmodal/transformers-tests`, one subfolder per
transformers version (delete it to fetch again).
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import pytest
import transformers


PACKAGE = "hf_transformers_tests"
COMMON_FILES = ("test_modeling_common.py", "test_configuration_common.py")
# Modules the common files import for mixins not run here, with the names they import from them.
STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:  # torch.export tests: not run\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:  # generate() tests: not run\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}  # the table ConfigTester sets on a config\n",
}


class CommonTestsUnavailable(RuntimeError):
    """The common tests could not be fetched (no network to PyPI, pip failed)."""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "xmodal" / "transformers-tests"
    return Path(os.environ.get("XMODAL_TRANSFORMERS_TESTS_CACHE", default)) / transformers.__version__


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise CommonTestsUnavailable(f"pip {args[0]} failed: {result.stderr.strip()[-2000:]}")


def _unpack_common_files(package: Path) -> None:
    """Download the transformers sdist of the installed version and keep only the common test files."""
    with tempfile.TemporaryDirectory() as download:
        requirement = f"transformers=={transformers.__version__}"
        _pip("download", requirement, "--no-deps", "--no-binary", ":all:", "-d", download)
        (sdist,) = Path(download).glob("transformers-*.tar.gz")
        with tarfile.open(sdist) as archive:
            for name in COMMON_FILES:
                member = archive.getmember(f"transformers-{transformers.__version__}/tests/{name}")
                (package / name).write_bytes(archive.extractfile(member).read())


def _write_package(package: Path) -> None:
    """The cached package: the common files, the stand-ins, and `__init__.py` files (written last: the marker)."""
    package.mkdir(parents=True, exist_ok=True)
    _unpack_common_files(package)
    for relative, text in STAND_INS.items():
        path = package / relative
        path.parent.mkdir(exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    (package / "__init__.py").touch()


def load_modeling_common():
    """`hf_transformers_tests.test_modeling_common`, fetched on first use (raises `CommonTestsUnavailable`)."""
    root = cache_dir()
    if not (root / PACKAGE / "__init__.py").exists():
        _write_package(root / PACKAGE)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    with warnings.catch_warnings():
        # Marks registered by transformers' own conftest (flash_attn_test, torch_compile_test...), unknown here.
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        return importlib.import_module(f"{PACKAGE}.test_modeling_common")
