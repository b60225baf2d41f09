import sys

from invoker.standalone.server import main

sys.exit(main())
