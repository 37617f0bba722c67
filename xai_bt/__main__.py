"""`python -m xai_bt <command>`."""
import sys

from .cli import main

sys.exit(main())
