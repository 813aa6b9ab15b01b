"""`python -m ensemble ...` is the same as the `ensemble` command (torchrun needs `-m`)."""

from ensemble.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
