"""`python -m saebench …`, which is also how torchrun starts one process per rank:

    torchrun --nproc-per-node 8 -m saebench train --store runs/s.duckdb --out runs/saes/x ...

(see trainers/distributed.py for what each rank does).
"""

import sys

from saebench.cli import main

sys.exit(main())
