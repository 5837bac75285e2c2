"""`python -m tune_hw.report RUN_DIR`: the report CLI (tune_hw.report)."""

import sys

from tune_hw.report import main

if __name__ == "__main__":
    sys.exit(main())
