"""Print every framework-free memory reading as JSON: ``python -m tfodtrain.memory``.

Runs on any machine, with or without a GPU, TensorFlow or Hydra; exits 0. Without NVML the
``gpus`` list is empty and ``nvml.reason`` says why (the same reason is logged once to stderr).

Example:
    $ python -m tfodtrain.memory | python -c "import json,sys; print(json.load(sys.stdin)['host']['rss_bytes'] > 0)"
    True
"""

import json
import sys

from tfodtrain.memory.probes import read_all


def main() -> int:
    json.dump(read_all(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
