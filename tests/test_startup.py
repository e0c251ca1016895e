"""Start-up bookkeeping (mrsflow.startup): the code-version cache survives a module
becoming a package."""

from __future__ import annotations

import json

from mrsflow import startup


def test_a_cached_import_that_vanished_is_parsed_again(tmp_path):
    """figures.py unchanged, but the module it imports as ``mrsflow.fit`` was fit.py when the
    cache was written and is fit/__init__.py now: the stale entry is not trusted, and the
    stage versions come out as without a cache."""
    path = startup.PACKAGE_DIR / "figures.py"
    st = path.stat()
    cache = tmp_path / "digests.json"
    cache.write_text(json.dumps({"figures.py": {
        "stat": [st.st_mtime_ns, st.st_size], "digest": "stale", "imports": ["fit.py"]}}))
    digests = startup._Digests(cache)
    digest, imports = digests(path)
    assert digest != "stale"
    assert startup.PACKAGE_DIR / "fit" / "__init__.py" in imports
    assert all(f.is_file() for f in imports)
    assert startup.stage_code_versions(cache) == startup.stage_code_versions(None)
