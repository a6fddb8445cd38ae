"""``python -m dsvc`` runs the command line."""

from dsvc.cli import main

if __name__ == "__main__":
    main()
