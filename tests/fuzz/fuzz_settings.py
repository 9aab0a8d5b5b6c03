"""How much the fuzz tests do: the ``ci`` profile by default, ``long`` with ``FARM_FUZZ_PROFILE=long``.

Not a conftest.py: one here would shadow tests/conftest.py, which the tests
import as ``conftest``. The Hypothesis profiles are applied per test with
:data:`FUZZ` (loading one globally would change the settings of the other
test directories too).
"""

from __future__ import annotations

import os
from typing import Dict

from hypothesis import HealthCheck, settings

#: Examples per property test; ``FARM_FUZZ_EXAMPLES`` sets the long profile's.
EXAMPLES: Dict[str, int] = {"ci": 150, "long": int(os.environ.get("FARM_FUZZ_EXAMPLES", "2000"))}
#: Malformed connections per daemon, on top of the burst of idle ones; ``FARM_FUZZ_CONNECTIONS`` sets the long's.
CONNECTIONS: Dict[str, int] = {"ci": 150, "long": int(os.environ.get("FARM_FUZZ_CONNECTIONS", "3000"))}
#: Connections held open at once, saying nothing, at the end of each daemon's stream.
IDLE_BURST = 50
#: Bounds on unproven connections above what a stream holds at once, all from 127.0.0.1: the streams try the
#: protocols' readers, tests/integration/test_gates.py the bounds (whose refusals are logged once per interval).
WIDE_GATE = ("--max-unproven", "1000", "--max-unproven-per-address", "1000")

PROFILE = os.environ.get("FARM_FUZZ_PROFILE", "ci")
if PROFILE not in EXAMPLES:
    raise ValueError("FARM_FUZZ_PROFILE=%s: expected one of %s" % (PROFILE, ", ".join(EXAMPLES)))

for _name, _count in EXAMPLES.items():
    settings.register_profile(
        "farm-fuzz-" + _name,
        max_examples=_count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

#: This run's Hypothesis settings, as a test decorator: ``@FUZZ``.
FUZZ = settings.get_profile("farm-fuzz-" + PROFILE)
#: Malformed connections each daemon gets in this run.
CONNECTION_COUNT = CONNECTIONS[PROFILE]
#: Seed of the live streams; ``FARM_FUZZ_SEED`` replays or varies a run.
SEED = int(os.environ.get("FARM_FUZZ_SEED", "20240601"))
