"""`python -m tfodtrain.preflight REQUEST.json`: one search step in a fresh process (tfodtrain.preflight.fresh)."""

import sys

from tfodtrain.preflight.fresh import search_step_main

if __name__ == "__main__":
    search_step_main(sys.argv[1])
