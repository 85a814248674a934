import sys

from signagent.cli import main

sys.exit(main())
