import sys

from sslad.cli import main

sys.exit(main())
