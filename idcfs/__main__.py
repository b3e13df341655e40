import sys

from idcfs.cli import main

sys.exit(main())
