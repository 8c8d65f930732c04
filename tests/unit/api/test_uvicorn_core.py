"""fleetgate.api.uvicorn_core: uvicorn's server classes without its command line, and the
package still whole for whoever asks it for more (issue 11: idle memory)."""

from __future__ import annotations

import json
import subprocess
import sys

# In a child process: the test process has imported uvicorn whole already.
CHILD = """
import json, sys
from fleetgate.api.uvicorn_core import uvicorn_classes

config, server = uvicorn_classes()
before = sorted(n for n in ("click", "uvicorn.main", "multiprocessing") if n in sys.modules)
again = uvicorn_classes()
import uvicorn
from uvicorn.lifespan.off import LifespanOff
same = [uvicorn.Config is config, uvicorn.Server is server, again == (config, server)]
# A name only the package's __init__ sets: the rest of the package runs now.
run, version = uvicorn.run, uvicorn.__version__
from uvicorn import main
after = sorted(n for n in ("click", "uvicorn.main") if n in sys.modules)
same += [uvicorn.Config is config, uvicorn.Server is server, callable(run), callable(main)]
try:
    uvicorn.no_such_name
    missing = False
except AttributeError:
    missing = True
print(json.dumps({"before": before, "after": after, "same": same, "version": version,
                  "missing": missing, "names": [config.__name__, server.__name__]}))
"""


def test_server_classes_without_the_command_line_then_the_whole_package() -> None:
    import uvicorn

    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result = json.loads(out)
    assert result["before"] == []
    assert result["names"] == ["Config", "Server"]
    assert all(result["same"])
    assert result["after"] == ["click", "uvicorn.main"]
    assert result["version"] == uvicorn.__version__
    assert result["missing"]


def test_an_imported_uvicorn_is_used_as_it_is() -> None:
    import uvicorn

    from fleetgate.api.uvicorn_core import uvicorn_classes

    assert uvicorn_classes() == (uvicorn.Config, uvicorn.Server)
