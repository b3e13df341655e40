import sys

from idcfs.cli.main import main

sys.exit(main())
