import sys

from anchor.app.cli import main

sys.exit(main())
