import sys

try:
    from syncd.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still loading syncd
    sys.exit(130)

sys.exit(main())
