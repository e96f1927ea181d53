import sys

from rankrm.cli import main

sys.exit(main())
