"""``python -m lighthubert_s3prl.run_downstream``: the launcher under the path users type and the SUPERB
runner starts; the code is :mod:`lighthubert_s3prl.upstream.run_downstream`."""
import sys

from .upstream.run_downstream import main

if __name__ == "__main__":
    sys.exit(main())
