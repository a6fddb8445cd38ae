"""``python -m dsvc.cli``."""

from dsvc.cli import main

if __name__ == "__main__":
    main()
