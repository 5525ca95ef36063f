"""``import bestroute_lc`` and its pure parts load neither torch nor transformers; every public
name still resolves."""

from __future__ import annotations

import subprocess
import sys

import bestroute_lc


def test_every_public_name_resolves() -> None:
    for name in bestroute_lc.__all__:
        assert getattr(bestroute_lc, name) is not None
    assert set(bestroute_lc.__all__) <= set(dir(bestroute_lc))


def test_the_package_and_its_pure_parts_do_not_import_torch() -> None:
    code = (
        "import sys, bestroute_lc\n"
        "from bestroute_lc import Pool, PoolMember, Prices, choose, NBilling\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
