import sys

from vjepa.cli import main

sys.exit(main())
