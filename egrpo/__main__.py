import sys

from egrpo.cli import main

sys.exit(main())
