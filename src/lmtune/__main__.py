import sys

from lmtune.cli import main

sys.exit(main())
