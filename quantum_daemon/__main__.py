import sys

from quantum_daemon.cli import main

sys.exit(main())
