"""`python -m xai_bt <command>`."""
import sys

from xai_bt.cli import main

sys.exit(main())
